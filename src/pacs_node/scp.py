"""The receiver: C-ECHO and C-STORE SCP for every storage SOP class.

Every instance is on disk (fsync) and committed in the database before the success status goes back.
Unknown calling AE titles are refused at association. The handlers never raise: each problem becomes a
status on the wire with an ErrorComment, a log line, and the server keeps serving; what cannot get a
status (a command pynetdicom cannot serve, a peer too slow or too large) is aborted by the guard.
"""

from __future__ import annotations

import logging
import socketserver
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
from db.errors import one_line
from db.storage import InvalidUID, instance_path, write_atomic
from pacs_node import metrics
from pacs_node.connection import GuardConfig
from pacs_node.decode import DatasetTooLarge, UndecodableElement, decode_dataset
from pacs_node.guard import ConnectionGuard
from pacs_node.logs import RefusalLog, printable
from pacs_node.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    UNABLE_TO_PROCESS,
    with_comment,
)
from pacs_node.store import BadDataset, WrongSOPClass, check, series_of
from pacs_node.transfers import Transfer

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
    limits: GuardConfig = field(default_factory=GuardConfig)


class Receiver:
    """Holds the handlers' state: what each open association has sent, and how it went."""

    def __init__(self, config: ReceiverConfig, db: Database) -> None:
        self.config = config
        self.db = db
        self._lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}
        self._unrecorded: list[dict[str, str | None]] = []  # ends of associations the database refused
        self.refusals = RefusalLog(log)
        self.guard = ConnectionGuard(config.limits, self.refusals)

    def handle_echo(self, event: Event) -> int:
        return SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        self._transfer(event).current = None
        try:
            status = self._store(event)
        except Exception as exc:  # the last line of defence: nothing reaches the network stack
            log.error("C-STORE from %s failed unexpectedly: %s", printable(event.assoc.requestor.ae_title, 16),
                      printable(one_line(exc)))
            log.debug("C-STORE failure", exc_info=True)
            status = with_comment(UNABLE_TO_PROCESS, f"unexpected error: {type(exc).__name__}")
        code = status if isinstance(status, int) else int(status.Status)
        metrics.instance_answered(code)
        if code != SUCCESS:
            comment = "" if isinstance(status, int) else f": {status.get('ErrorComment', '')}"
            self._transfer(event).refused(f"0x{code:04X}{comment}")
        return status

    def _store(self, event: Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        request = event.request
        if self.guard.refused(event.assoc):
            return with_comment(OUT_OF_RESOURCES, "association aborted")
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
            log.error("database unavailable: %s", one_line(exc))
            return with_comment(OUT_OF_RESOURCES, "database unavailable")

        relative = instance_path(incoming.study_instance_uid, incoming.series_instance_uid, incoming.sop_instance_uid)
        target = self.config.storage_root / relative
        try:
            size = write_atomic(target, event.encoded_dataset())
        except OSError as exc:
            log.error("cannot write %s: %s", relative, exc)
            return with_comment(OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc}")
        try:
            ingest.record_instance(self.db, incoming.received(str(relative), size, calling))
        except SQLAlchemyError as exc:
            log.error("cannot record %s: %s", incoming.sop_instance_uid, one_line(exc))
            target.unlink(missing_ok=True)  # not acknowledged, so not kept: the sender sends it again
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
                log.warning("series %s may be partial: %s; it waits for the sender's retry", uid,
                            printable(reason))
        try:
            ingest.release_series(self.db, outcomes)
        except Exception as exc:
            log.error("cannot record the end of an association for %s (%s); trying again later", sorted(outcomes),
                      one_line(exc))
            with self._lock:
                self._unrecorded.append(outcomes)

    def record_pending_releases(self) -> None:
        """Record the ends of associations the database refused when they closed (a lock, an outage): until
        then their series cannot settle."""
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for n, outcomes in enumerate(pending):
            try:
                ingest.release_series(self.db, outcomes)
            except Exception:
                with self._lock:
                    self._unrecorded.extend(pending[n:])
                raise


class GuardedServer(ThreadedAssociationServer):
    """The threaded server with a listen backlog that holds a burst of senders (socketserver's is 5)."""

    request_queue_size = 128

    def shutdown(self) -> None:
        """Stop serving and close the socket (the server was made, not started, by the AE)."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()


def make_ae(config: ReceiverConfig) -> AE:
    limits = config.limits
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = limits.maximum_pdu_size
    ae.network_timeout = limits.network_timeout
    ae.acse_timeout = limits.negotiation_timeout  # ARTIM, and the wait for the A-ASSOCIATE-RQ
    # The guard limits established and negotiating associations apart; pynetdicom's own limit counts both.
    ae.maximum_associations = limits.maximum_associations + limits.maximum_negotiating
    ae.require_called_aet = True
    ae.require_calling_aet = list(config.allowed_calling_ae_titles)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    return ae


def start(config: ReceiverConfig, db: Database) -> ThreadedAssociationServer:
    """Start listening in the background; stop with ``server.shutdown()``."""
    return serve(Receiver(config, db))


def serve(receiver: Receiver) -> ThreadedAssociationServer:
    """Start listening in the background with ``receiver``'s handlers; stop with ``server.shutdown()``."""
    config = receiver.config
    handlers = [
        (evt.EVT_C_ECHO, receiver.handle_echo),
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_RELEASED, receiver.handle_released),
        (evt.EVT_CONN_CLOSE, receiver.handle_close),
        *metrics.HANDLERS,
    ]
    server = make_ae(config).make_server((config.bind_address, config.port),
                                         evt_handlers=receiver.guard.handlers() + handlers, server_class=GuardedServer)
    receiver.guard.server = server
    threading.Thread(target=server.serve_forever, name="ainode-receive", daemon=True).start()
    log.info("%s listening on %s:%d", config.ae_title, config.bind_address, config.port)
    return server
