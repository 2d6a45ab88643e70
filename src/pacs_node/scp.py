"""The receiver: C-ECHO and C-STORE SCP for every storage SOP class.

Every instance is on disk (fsync) and committed in the database before the success status goes back.
Unknown calling AE titles are refused at association. The handlers never raise: each problem becomes a
status on the wire with an ErrorComment, a log line, and the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from db import ingest
from db.engine import Database
from db.sop_classes import VOLUME_IMAGE_STORAGE
from db.storage import InvalidUID, check_uid, instance_path, write_atomic
from pacs_node.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    UNABLE_TO_PROCESS,
    with_comment,
)

log = logging.getLogger("ainode.receive")

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

@dataclass(frozen=True)
class ReceiverConfig:
    ae_title: str
    bind_address: str
    port: int
    allowed_calling_ae_titles: tuple[str, ...]
    storage_root: Path
    maximum_pdu_size: int = 131072
    network_timeout: float = 60.0


class BadDataset(ValueError):
    """The received dataset cannot be stored as it is; the message names the attribute and value."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _check_pixel_data(ds: Dataset, transfer_syntax: UID, sop_class_uid: str) -> None:
    """Refuse a truncated or inconsistent Pixel Data element; pixels themselves are decoded later.

    Objects without pixels (SR, KO, PR, RT…) are stored as they come: a PACS sends whole studies, and
    the worker records why they are not part of a volume.
    """
    if "PixelData" not in ds:
        if sop_class_uid in VOLUME_IMAGE_STORAGE:
            raise BadDataset("the dataset has no Pixel Data")
        return
    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if not isinstance(ds.get(keyword), int) or ds.get(keyword) <= 0:
            raise BadDataset(f"{keyword} {ds.get(keyword)!r} is missing or not a positive number")
    pixel_data = ds.PixelData
    if transfer_syntax.is_encapsulated:
        if len(pixel_data) < 8 or pixel_data[:4] != b"\xfe\xff\x00\xe0":
            raise BadDataset("encapsulated Pixel Data does not start with a Basic Offset Table item")
        return
    frames = _int(ds, "NumberOfFrames") or 1
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated // 8
    if len(pixel_data) < expected:
        raise BadDataset(f"Pixel Data is truncated: {len(pixel_data)} bytes, {expected} expected")


@dataclass
class Transfer:
    """What one association has sent: each series it touched, with the first reason it may be partial."""

    series: dict[str, str | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # failure statuses for instances of no known series
    released: bool = False
    current: str | None = None  # the series of the request being handled (one at a time per association)

    def refused(self, status: str) -> None:
        """An instance of the current request was answered with a failure ``status``."""
        if self.current is None:
            self.failures.append(status)
        elif self.series[self.current] is None:
            self.series[self.current] = f"an instance was answered {status}"

    def outcomes(self) -> dict[str, str | None]:
        """Per series, why this transfer may have left it partial, or None when nothing went wrong."""
        if not self.released:
            return {uid: "the association ended without a release (aborted or connection lost)"
                    for uid in self.series}
        orphan = f"an instance of unknown series was refused ({self.failures[0]})" if self.failures else None
        return {uid: reason or orphan for uid, reason in self.series.items()}


class Receiver:
    """Holds the handlers' state: what each open association has sent, and how it went."""

    def __init__(self, config: ReceiverConfig, db: Database) -> None:
        self.config = config
        self.db = db
        self._lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}

    def handle_echo(self, event: Event) -> int:
        return SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        self._transfer(event).current = None
        try:
            status = self._store(event)
        except Exception as exc:  # the last line of defence: nothing reaches the network stack
            log.exception("C-STORE from %s failed unexpectedly", event.assoc.requestor.ae_title)
            status = with_comment(UNABLE_TO_PROCESS, f"unexpected error: {type(exc).__name__}")
        code = status if isinstance(status, int) else int(status.Status)
        if code != SUCCESS:
            comment = "" if isinstance(status, int) else f": {status.get('ErrorComment', '')}"
            self._transfer(event).refused(f"0x{code:04X}{comment}")
        return status

    def _store(self, event: Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        request = event.request
        try:
            ds = event.dataset
            transfer_syntax = UID(event.context.transfer_syntax)
            study = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
            self._touch(event, series)  # from here on a refusal marks this series as possibly partial
            sop_instance_uid = check_uid(request.AffectedSOPInstanceUID, "AffectedSOPInstanceUID")
            sop_class_uid = check_uid(request.AffectedSOPClassUID, "AffectedSOPClassUID")
            if check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID") != sop_instance_uid:
                raise BadDataset(f"SOPInstanceUID {ds.SOPInstanceUID} differs from the request's {sop_instance_uid}")
            if check_uid(ds.get("SOPClassUID"), "SOPClassUID") != sop_class_uid:
                log.warning("%s: SOPClassUID %s differs from the request's %s", sop_instance_uid,
                            ds.SOPClassUID, sop_class_uid)
                return with_comment(DATASET_DOES_NOT_MATCH, f"SOPClassUID {ds.SOPClassUID} != request")
            _check_pixel_data(ds, transfer_syntax, sop_class_uid)
        except (InvalidUID, BadDataset) as exc:
            log.warning("refused an instance from %s: %s", calling, exc)
            return with_comment(CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # pydicom raises many kinds on undecodable bytes
            log.warning("cannot decode an instance from %s: %s", calling, exc)
            return with_comment(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")

        try:
            if ingest.is_stored(self.db, sop_instance_uid):
                log.info("%s already stored; not stored again", sop_instance_uid)
                return SUCCESS
        except SQLAlchemyError as exc:
            log.error("database unavailable: %s", exc)
            return with_comment(OUT_OF_RESOURCES, "database unavailable")

        relative = instance_path(study, series, sop_instance_uid)
        try:
            size = write_atomic(self.config.storage_root / relative, event.encoded_dataset())
        except OSError as exc:
            log.error("cannot write %s: %s", relative, exc)
            return with_comment(OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc}")

        record = ingest.ReceivedInstance(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid, transfer_syntax_uid=str(transfer_syntax),
            modality=_text(ds, "Modality")[:16], path=str(relative), size_bytes=size, calling_ae_title=calling,
            patient_id=_text(ds, "PatientID")[:64], patient_name=_text(ds, "PatientName")[:324],
            study_date=_text(ds, "StudyDate")[:8], accession_number=_text(ds, "AccessionNumber")[:16],
            study_description=_text(ds, "StudyDescription")[:64], series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription")[:64], instance_number=_int(ds, "InstanceNumber"),
        )
        try:
            ingest.record_instance(self.db, record)
        except SQLAlchemyError as exc:
            log.error("cannot record %s: %s", sop_instance_uid, exc)
            return with_comment(OUT_OF_RESOURCES, "database error")
        return SUCCESS

    def _transfer(self, event: Event) -> Transfer:
        with self._lock:
            return self._transfers.setdefault(id(event.assoc), Transfer())

    def _touch(self, event: Event, series_instance_uid: str) -> None:
        transfer = self._transfer(event)
        transfer.series.setdefault(series_instance_uid, None)
        transfer.current = series_instance_uid


    def handle_released(self, event: Event) -> None:
        self._transfer(event).released = True

    def handle_close(self, event: Event) -> None:
        with self._lock:
            transfer = self._transfers.pop(id(event.assoc), None)
        if transfer is None or not transfer.series:
            return
        outcomes = transfer.outcomes()
        for uid, reason in outcomes.items():
            if reason:
                log.warning("series %s may be partial: %s; it waits for the sender's retry", uid, reason)
        try:
            ingest.release_series(self.db, outcomes)
        except Exception:
            log.exception("cannot record the end of an association for %s", sorted(outcomes))


def make_ae(config: ReceiverConfig) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.maximum_pdu_size
    ae.network_timeout = config.network_timeout
    ae.require_called_aet = True
    ae.require_calling_aet = list(config.allowed_calling_ae_titles)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    return ae


def start(config: ReceiverConfig, db: Database) -> ThreadedAssociationServer:
    """Start listening in the background; stop with ``server.shutdown()``."""
    receiver = Receiver(config, db)
    handlers = [
        (evt.EVT_C_ECHO, receiver.handle_echo),
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_RELEASED, receiver.handle_released),
        (evt.EVT_CONN_CLOSE, receiver.handle_close),
    ]
    server = make_ae(config).start_server(
        (config.bind_address, config.port), block=False, evt_handlers=handlers
    )
    log.info("%s listening on %s:%d", config.ae_title, config.bind_address, config.port)
    return server
