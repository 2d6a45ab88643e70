"""One connection the receiver reads from, against deadlines and limits: negotiation finished in time, no PDU
longer than announced, none that trickles, and a memory budget for datasets being assembled.

pynetdicom 3.0.4 reads a PDU with a blocking ``recv`` of the whole declared length on a socket without a
timeout (``DULServiceProvider._read_pdu_data``), so a peer that trickles bytes pins the DUL thread, its
ARTIM and idle timers never run, and ``Association.kill()`` waits for it forever; the declared length is
buffered whole whatever was negotiated. ``GuardedSocket`` is the one intervention inside pynetdicom: at
``EVT_CONN_OPEN`` (before the DUL thread starts) the association's ``AssociationSocket`` becomes one.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

from pynetdicom.transport import AssociationSocket

from pacs_node.logs import RefusalLog, printable

_PDU_TYPES = range(0x01, 0x08)
_P_DATA_TF = 0x04
# A-ABORT PDU, source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8
_ABORT_INVALID_PDU = bytes([0x07, 0x00, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


@dataclass(frozen=True)
class GuardConfig:
    maximum_associations: int = 64  # established associations; more are rejected (local limit exceeded)
    maximum_negotiating: int = 64  # connections not yet negotiated; they do not take established slots
    negotiation_timeout: float = 5.0  # connection open -> A-ASSOCIATE-AC/RJ sent
    network_timeout: float = 60.0  # silence on the socket; also the longest one PDU may take to arrive
    maximum_pdu_size: int = 131072  # what the acceptor announces; P-DATA-TF PDUs may not exceed it
    pdu_margin: int = 1024  # tolerance above the announced size for peers that count differently
    maximum_request_pdu: int = 1 << 20  # an A-ASSOCIATE-RQ (contexts, user identity) before negotiation
    maximum_dataset_bytes: int = 1 << 30  # one dataset, as assembled
    maximum_inflated_bytes: int = 128 << 20  # one deflated dataset, inflated (measuring a bomb takes ~4 ms a MiB)
    maximum_inflight_bytes: int = 4 << 30  # datasets being assembled on all associations together
    maximum_command_bytes: int = 1 << 16  # a DIMSE command set


class InflightBudget:
    """Bytes of datasets being assembled across all associations; a bound on the receiver's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


class GuardedSocket(AssociationSocket):
    """An ``AssociationSocket`` whose reads keep a deadline and refuse oversized PDUs.

    Not constructed: ``ConnectionGuard.on_conn_open`` re-classes the socket pynetdicom made and calls
    ``arm``. The DUL reads a PDU as ``recv(6)`` then ``recv(length)``; this class parses the
    6-byte header itself so it knows which call is which.
    """

    deadline: float | None  # monotonic time by which negotiation must be complete
    pdu_limit: int
    idle: float
    refused: str | None  # why the association is being dropped; the store handler checks it
    dataset_bytes: int
    command_bytes: int
    budget: InflightBudget | None
    dataset_limit: int
    command_limit: int
    refusals: RefusalLog

    def arm(self, config: GuardConfig, budget: InflightBudget, refusals: RefusalLog) -> None:
        self.deadline = time.monotonic() + config.negotiation_timeout
        self.pdu_limit = config.maximum_request_pdu
        self.idle = config.network_timeout
        self.refused = None
        self.dataset_bytes = self.command_bytes = 0
        self.budget = budget
        self.dataset_limit = config.maximum_dataset_bytes
        self.command_limit = config.maximum_command_bytes
        self.refusals = refusals
        self._body: int | None = None  # declared length of the PDU whose header was just read
        self._pdu_deadline = 0.0

    def refuse(self, reason: str, send_abort: bool = True) -> None:
        """Drop the connection now: an A-ABORT if the DUL is not mid-send, then shutdown."""
        if self.refused is None:
            self.refused = reason
            self.refusals.line(f"association from {printable(self.assoc.requestor.address)} "
                               f"({printable(self.assoc.requestor.ae_title or '?', 16)}) dropped: {printable(reason)}")
        raw = self.socket
        if raw is None:
            return
        if send_abort:
            try:
                raw.settimeout(1.0)
                raw.sendall(_ABORT_INVALID_PDU)
            except OSError:
                pass
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _time_left(self) -> float:
        now = time.monotonic()
        left = min(self.idle, self._pdu_deadline - now)
        if self.deadline is not None:
            left = min(left, self.deadline - now)
        return left

    def recv(self, nr_bytes: int) -> bytearray:
        header = self._body is None or nr_bytes != self._body
        if header:
            self._pdu_deadline = time.monotonic() + self.idle
        self._body = None
        data = self._read(nr_bytes)
        if header and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBL", data)
            if pdu_type in _PDU_TYPES:
                if length > self.pdu_limit:
                    self.refuse(f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than {self.pdu_limit}")
                    return bytearray()  # the DUL sees a short header: transport closed (Evt17)
                self._body = length
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        try:
            return self._read_until_deadline(nr_bytes)
        finally:
            if self.socket is not None:
                self.socket.settimeout(self.idle)  # the DUL sends on this socket too, with this timeout

    def _read_until_deadline(self, nr_bytes: int) -> bytearray:
        raw = self.socket
        data = bytearray()
        while raw is not None and len(data) < nr_bytes:
            left = self._time_left()
            if left <= 0:
                what = "negotiation" if self.deadline is not None else "a PDU"
                self.refuse(f"{what} not complete in time ({len(data)} of {nr_bytes} bytes of a read)")
                return data
            raw.settimeout(left)
            try:
                chunk = raw.recv(min(nr_bytes - len(data), 65536))
            except TimeoutError:
                continue  # the loop re-checks the deadlines and refuses
            except OSError:
                return data
            if not chunk:
                return data
            data += chunk
        return data
