"""The receiver's guard against slow, huge and malformed input, for every association of one server: room
for good senders whatever the bad ones do (established and negotiating associations counted apart), each
connection read against deadlines and limits (``connection.GuardedSocket``), dataset fragments counted
against a per-dataset and a server-wide budget, and DIMSE commands pynetdicom would drop unanswered aborted.

pynetdicom assembles dataset fragments in a ``BytesIO`` without a cap, and drops a C-STORE-RQ whose required
command elements are empty without any response. Everything here hangs off public events (``EVT_CONN_OPEN``,
``EVT_REQUESTED``, ``EVT_ESTABLISHED``, ``EVT_PDU_RECV``, ``EVT_DIMSE_RECV``, ``EVT_CONN_CLOSE``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from pacs_node import metrics
from pacs_node.connection import GuardConfig, GuardedSocket, InflightBudget
from pacs_node.logs import RefusalLog, printable
from pacs_node.peers import Admission

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
_REQUIRED = {
    C_STORE_RQ: ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID"),  # pynetdicom defaults Priority
    C_ECHO_RQ: ("MessageID", "AffectedSOPClassUID"),
}


def _command_problem(cs: object, assoc: object) -> str | None:
    """Why a received DIMSE command cannot be served, or None."""
    field = getattr(cs, "CommandField", None)
    if field not in _REQUIRED:
        return f"command field {field!r} is not a C-STORE-RQ or C-ECHO-RQ"
    for keyword in _REQUIRED[field]:
        value = getattr(cs, keyword, None)
        if value is None or (isinstance(value, str) and not value.strip("\x00 ")):
            return f"{keyword} is missing or empty"
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        value = getattr(cs, keyword, None)
        if value is None:
            continue
        text = str(value).rstrip("\x00 ")
        if len(text) > 64 or not UID(text).is_valid:
            return f"{keyword} {printable(text, 80)!r} is not a valid UID"
    return None


class ConnectionGuard:
    """The event handlers that apply a ``GuardConfig`` to every association of one server."""

    def __init__(self, config: GuardConfig, refusals: RefusalLog,
                 admit: Callable[[Event], Admission | None] = lambda event: None,
                 refused: Callable[[Event, Admission], None] = lambda event, why: None) -> None:
        """``admit`` decides whether a complete A-ASSOCIATE-RQ may proceed (who calls, from where, over what,
        and whether the node can take data now); ``refused`` hears of every association refused here."""
        self.config = config
        self.budget = InflightBudget(config.maximum_inflight_bytes)
        self.refusals = refusals
        self.admit = admit
        self.refused_by = refused
        self.servers: list[ThreadedAssociationServer] = []

    def counts(self) -> tuple[int, int]:
        """(established, negotiating) associations of the server, from its live threads as pynetdicom counts."""
        active = [assoc for server in self.servers for assoc in server.active_associations]
        established = sum(1 for assoc in active if assoc.is_established)
        return established, len(active) - established

    def handlers(self) -> list[tuple[evt.EventType, object]]:
        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_PDU_RECV, self.on_pdu_recv),
            (evt.EVT_DIMSE_RECV, self.on_dimse_recv),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    @staticmethod
    def socket_of(assoc: object) -> GuardedSocket | None:
        sock = getattr(getattr(assoc, "dul", None), "socket", None)
        return sock if isinstance(sock, GuardedSocket) else None

    def refused(self, assoc: object) -> str | None:
        """Why this association is being dropped (a handler must then store nothing), or None."""
        sock = self.socket_of(assoc)
        return sock.refused if sock else None

    def on_conn_open(self, event: Event) -> None:
        # pynetdicom's debug loggers (bound first, by the Association itself) raise on malformed commands
        # and PDUs, e.g. a missing AffectedSOPInstanceUID; a notification handler that raises skips every
        # handler after it, the guard's included.
        for kind in (evt.EVT_DIMSE_RECV, evt.EVT_PDU_RECV):
            for handler, _ in list(event.assoc.get_handlers(kind)):
                if getattr(handler, "__module__", "") == "pynetdicom._handlers":
                    event.assoc.unbind(kind, handler)
        sock = event.assoc.dul.socket
        if sock is None or sock.socket is None or type(sock) is not AssociationSocket:
            return
        sock.__class__ = GuardedSocket
        guarded: GuardedSocket = sock
        guarded.arm(self.config, self.budget, self.refusals)
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.socket.settimeout(self.config.network_timeout)  # also bounds a send to a peer that never reads
        _, negotiating = self.counts()  # this connection's thread has not started: not counted yet
        if negotiating >= self.config.maximum_negotiating:
            guarded.refuse(f"{negotiating} connections are already negotiating", send_abort=False)

    def on_requested(self, event: Event) -> None:
        """The A-ASSOCIATE-RQ is complete: refuse a caller that is not admitted, or any when the established
        associations are at the limit.

        pynetdicom's own limit (``AE.maximum_associations``) counts connections still negotiating too, so
        slow peers would take the slots of good ones; it is set above this one and is only a backstop.
        """
        refusal = self.admit(event)
        if refusal is None:
            established, _ = self.counts()
            if established >= self.config.maximum_associations:
                refusal = Admission(f"{established} associations are established", identity=False, limit=True)
        if refusal is None:
            return
        self.refusals.line(f"association from {printable(event.assoc.requestor.primitive.calling_ae_title, 16)} "
                           f"at {printable(event.assoc.requestor.address)} rejected: {printable(refusal.reason)}")
        self.refused_by(event, refusal)
        metrics.association(event.assoc.requestor.primitive.calling_ae_title, accepted=False)
        if refusal.identity:
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
        else:  # transient, presentation related: local limit exceeded, or temporary congestion
            event.assoc.acse.send_reject(0x02, 0x03, 0x02 if refusal.limit else 0x01)
        event.assoc.kill()  # as pynetdicom's own rejection does: returns once the A-ASSOCIATE-RJ is out

    def on_established(self, event: Event) -> None:
        sock = self.socket_of(event.assoc)
        if sock is None:
            return
        sock.deadline = None
        announced = event.assoc.acceptor.maximum_length or self.config.maximum_dataset_bytes
        sock.pdu_limit = announced + self.config.pdu_margin

    def on_pdu_recv(self, event: Event) -> None:
        """Count dataset and command bytes as fragments arrive; abort past the caps."""
        pdu = event.pdu
        sock = self.socket_of(event.assoc)
        if sock is None or not isinstance(pdu, P_DATA_TF):
            return
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value:
                continue
            size, control = len(value) - 1, value[0]
            if control & 1:
                sock.command_bytes += size
                if sock.command_bytes > sock.command_limit:
                    self._abort(event, sock, f"a command set of more than {sock.command_limit} bytes")
                    return
                if control & 2:
                    sock.command_bytes = 0
                    self._release(sock)  # a new message: the previous dataset is no longer assembling
                continue
            if not self.budget.reserve(size):
                self._abort(event, sock, f"datasets in flight exceed {self.budget.limit} bytes")
                return
            sock.dataset_bytes += size
            if sock.dataset_bytes > sock.dataset_limit:
                self._abort(event, sock, f"a dataset of more than {sock.dataset_limit} bytes")
                return

    def _release(self, sock: GuardedSocket) -> None:
        if sock.dataset_bytes:
            self.budget.release(sock.dataset_bytes)
            sock.dataset_bytes = 0

    def _abort(self, event: Event, sock: GuardedSocket, reason: str) -> None:
        """A-ABORT from the DUL thread itself (these events run there), on the socket, not via the FSM.

        ``assoc.abort()`` here would queue an Evt15 that pynetdicom's own Evt19 (for a command it cannot
        convert) can overtake; Evt15 in Sta13 then raises InvalidEventError and kills the DUL thread.
        """
        if sock.refused is None:
            sock.refuse(f"aborted: {reason}")

    def on_dimse_recv(self, event: Event) -> None:
        """A command pynetdicom would drop without a response (or serve on the wrong context) aborts."""
        sock = self.socket_of(event.assoc)
        if sock is None or sock.refused:
            return
        message = event.message
        cs = getattr(message, "command_set", None)
        problem = _command_problem(cs, event.assoc)
        if problem is None and cs is not None and cs.CommandField == C_STORE_RQ:
            contexts = {cx.context_id: cx for cx in event.assoc.accepted_contexts}
            cx = contexts.get(message.context_id)
            sop_class = str(cs.AffectedSOPClassUID).rstrip("\x00 ")
            if cx is None or cx.abstract_syntax != sop_class:
                problem = f"AffectedSOPClassUID {printable(sop_class, 80)} is not the context's abstract syntax"
        if problem:
            self._abort(event, sock, f"undecodable DIMSE command: {problem}")

    def on_conn_close(self, event: Event) -> None:
        sock = self.socket_of(event.assoc)
        if sock is None:
            return
        self._release(sock)
        dul = event.assoc.dul
        if sock.deadline is not None and not event.assoc.is_established and dul.to_user_queue.empty():
            # The association thread waits acse_timeout for an A-ASSOCIATE-RQ that cannot come now; while
            # it waits it counts as negotiating. ``None`` is what that wait returns on a timeout.
            dul.to_user_queue.put(None)
