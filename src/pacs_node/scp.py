"""The receiver: C-ECHO and C-STORE SCP for every storage SOP class.

Every instance is on disk (fsync) and committed in the database before the success status goes back.
Unknown calling AE titles are refused at association. The handlers never raise: each problem becomes a
status on the wire with an ErrorComment, a log line, and the server keeps serving; what cannot get a
status (a command pynetdicom cannot serve, a peer too slow or too large) is aborted by the guard.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
)
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from db import audit, ingest
from db.engine import Database
from db.errors import one_line
from db.storage import InvalidUID, Watermark, instance_path, write_atomic
from pacs_node import metrics
from pacs_node.connection import GuardConfig
from pacs_node.decode import DatasetTooLarge, UndecodableElement, decode_dataset
from pacs_node.guard import ConnectionGuard
from pacs_node.logs import RefusalLog, printable
from pacs_node.peers import Admission, Peer, admit, settle_seconds
from pacs_node.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    UNABLE_TO_PROCESS,
    with_comment,
)
from pacs_node.store import BadDataset, WrongSOPClass, check, series_of
from pacs_node.tls import TLSFiles
from pacs_node.transfers import Associations, caller

log = logging.getLogger("ainode.receive")


@dataclass(frozen=True)
class ReceiverConfig:
    ae_title: str
    bind_address: str
    port: int  # plain DICOM; 0: none
    allowed_calling_ae_titles: tuple[str, ...]  # from any address, with or without TLS, unless a peer names it
    storage_root: Path
    limits: GuardConfig = field(default_factory=GuardConfig)
    peers: tuple[Peer, ...] = ()  # callers known by address and transport as well
    tls_port: int = 0  # DICOM TLS; 0: none
    tls: TLSFiles | None = None
    watermark: Watermark = field(default_factory=lambda: Watermark(0, 0.0))

    @property
    def callers(self) -> tuple[Peer, ...]:
        """A peer entry governs its AE title alone: the plain list only adds titles no peer names, else the
        default list (which has "ORTHANC") would let a restricted peer call from anywhere without TLS."""
        named = {peer.ae_title for peer in self.peers}
        return self.peers + tuple(Peer(title, title) for title in self.allowed_calling_ae_titles
                                  if title not in named)


class Receiver:
    """Holds the handlers' state: what each open association has sent, and how it went."""

    def __init__(self, config: ReceiverConfig, db: Database) -> None:
        self.config = config
        self.db = db
        # The receiver's writes take turns in this process (a thread waits here, in order, not in SQLite's
        # busy loop), so the database wait, kept short to answer within a second, applies only to other
        # processes holding the database.
        self._writing = threading.Lock()
        self.associations = Associations(db, self._writing, audit.actor("receiver"),
                                         lambda ae_title: settle_seconds(config.callers, ae_title))
        self.refusals = RefusalLog(log)
        self.failures = RefusalLog(log, level=logging.ERROR, what="errors")  # a full disk meets every instance
        self.guard = ConnectionGuard(config.limits, self.refusals, self.admit, self.refused)

    def admit(self, event: Event) -> Admission | None:
        """Whether the caller may proceed: a known peer, from an allowed address, over TLS where it must;
        and the disk has room (else transient: the sender tries again later)."""
        refusal = admit(self.config.callers, *caller(event))
        if refusal is None and (low := self.config.watermark.problem(self.config.storage_root)):
            refusal = Admission(low, identity=False)
        return refusal

    def refused(self, event: Event, refusal: Admission) -> None:
        """An association refused at negotiation (nothing was stored): into the audit trail."""
        self._audit_refusal(*caller(event), refusal.reason)

    def refused_connection(self, address: str, reason: str) -> None:
        """A TLS connection that failed its handshake: refused before any association, logged and audited."""
        self.refusals.line(f"connection from {printable(address)} refused: {printable(reason)}")
        self._audit_refusal("", address, True, reason)

    def _audit_refusal(self, calling: str, address: str, tls: bool, reason: str) -> None:
        try:
            with self._writing:
                audit.record_refusal(self.db, self.associations.actor, calling[:16], address[:64], tls, reason[:500])
        except Exception as exc:
            self.failures.line(f"cannot audit a refused association: {printable(one_line(exc), 500)}")

    def handle_echo(self, event: Event) -> int:
        return SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        self.associations.of(event).current = None
        try:
            status = self._store(event)
        except Exception as exc:  # the last line of defence: nothing reaches the network stack
            self.failures.line(f"C-STORE from {printable(event.assoc.requestor.ae_title, 16)} failed unexpectedly: "
                               f"{printable(one_line(exc))}")
            log.debug("C-STORE failure", exc_info=True)
            status = with_comment(UNABLE_TO_PROCESS, f"unexpected error: {type(exc).__name__}")
        code = status if isinstance(status, int) else int(status.Status)
        metrics.instance_answered(code)
        if code != SUCCESS:
            comment = "" if isinstance(status, int) else f": {status.get('ErrorComment', '')}"
            self.associations.of(event).refused(f"0x{code:04X}{comment}")
        return status

    def _store(self, event: Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        request = event.request
        if self.guard.refused(event.assoc):
            return with_comment(OUT_OF_RESOURCES, "association aborted")
        if low := self.config.watermark.problem(self.config.storage_root):
            self.refusals.refused(calling, low)
            return with_comment(OUT_OF_RESOURCES, "storage nearly full")
        limits = self.config.limits
        try:
            ds = decode_dataset(request.DataSet, UID(event.context.transfer_syntax), limits.maximum_dataset_bytes,
                                limits.maximum_inflated_bytes)
        except DatasetTooLarge as exc:
            self.refusals.refused(calling, exc)
            return with_comment(OUT_OF_RESOURCES, str(exc))
        except UndecodableElement as exc:
            self.refusals.refused(calling, exc)
            return with_comment(CANNOT_UNDERSTAND, str(exc))
        try:
            self._touch(event, series_of(ds)[1])  # from here on a refusal marks this series as possibly partial
            incoming = check(ds, request.AffectedSOPInstanceUID, request.AffectedSOPClassUID,
                             event.context.transfer_syntax)
        except WrongSOPClass as exc:
            self.refusals.refused(calling, exc)
            return with_comment(DATASET_DOES_NOT_MATCH, str(exc))
        except (InvalidUID, BadDataset) as exc:
            self.refusals.refused(calling, exc)
            return with_comment(CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # pydicom raises many kinds on undecodable bytes
            self.refusals.refused(calling, f"cannot decode the dataset: {one_line(exc)}")
            return with_comment(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")

        try:
            if ingest.is_stored(self.db, incoming.sop_instance_uid):
                log.info("%s already stored; not stored again", incoming.sop_instance_uid)
                return SUCCESS
        except SQLAlchemyError as exc:
            self.failures.line(f"database unavailable: {printable(one_line(exc), 500)}")
            return with_comment(OUT_OF_RESOURCES, "database unavailable")

        relative = instance_path(incoming.study_instance_uid, incoming.series_instance_uid, incoming.sop_instance_uid)
        target = self.config.storage_root / relative
        try:
            size = write_atomic(target, event.encoded_dataset())
        except OSError as exc:
            self.failures.line(f"cannot write {relative}: {printable(exc, 500)}")
            return with_comment(OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc}")
        try:
            with self._writing:
                ingest.record_instance(self.db, replace(incoming, path=str(relative), size_bytes=size,
                                                        calling_ae_title=calling))
            self.associations.of(event).stored += 1
        except SQLAlchemyError as exc:
            self.failures.line(f"cannot record {incoming.sop_instance_uid}: {printable(one_line(exc), 500)}")
            target.unlink(missing_ok=True)  # not acknowledged, so not kept: the sender sends it again
            return with_comment(OUT_OF_RESOURCES, "database error")
        return SUCCESS

    def _touch(self, event: Event, series_instance_uid: str) -> None:
        transfer = self.associations.of(event)
        transfer.series.setdefault(series_instance_uid, None)
        transfer.current = series_instance_uid
