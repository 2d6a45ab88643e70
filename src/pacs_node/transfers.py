"""What each association has sent and how it ended: the series it touched and, per series, why the
transfer may have left it partial (a series with such a reason waits longer for the sender's retry), and
the association's line in the audit trail."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom.events import Event

from db import audit, ingest
from db.engine import Database
from db.errors import one_line
from db.models import utcnow
from pacs_node.logs import printable

log = logging.getLogger("ainode.receive")


@dataclass
class Transfer:
    """What one association has sent: each series it touched, with the first reason it may be partial."""

    series: dict[str, str | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # failure statuses for instances of no known series
    released: bool = False
    current: str | None = None  # the series of the request being handled (one at a time per association)
    calling_ae_title: str = ""
    address: str = ""
    tls: bool = False
    stored: int = 0
    refusals: int = 0
    started_at: dt.datetime = field(default_factory=utcnow)  # a clean end clears only marks left before it

    def refused(self, status: str) -> None:
        """An instance of the current request was answered with a failure ``status``."""
        self.refusals += 1
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


def caller(event: Event) -> tuple[str, str, bool]:
    """The calling AE title (from the A-ASSOCIATE-RQ, before pynetdicom copies it on acceptance), the address
    it calls from, and whether it uses TLS."""
    requestor = event.assoc.requestor
    primitive = getattr(requestor, "primitive", None)
    title = getattr(primitive, "calling_ae_title", None) or requestor.ae_title
    tls = isinstance(getattr(event.assoc.dul.socket, "socket", None), ssl.SSLSocket)
    return str(title).strip(), str(requestor.address), tls


class Associations:
    """The open associations of one receiver, and what happens when each ends: its series are released
    (with why they may be partial) and the association goes into the audit trail."""

    def __init__(self, db: Database, writing: threading.Lock, actor: str,
                 settle_for: Callable[[str], float | None] = lambda ae_title: None) -> None:
        """``writing``: the lock the receiver's database writes take turns on; ``settle_for``: a calling AE
        title's own settle time, if its peer entry gives one."""
        self.db = db
        self.settle_for = settle_for
        self.writing = writing
        self.actor = actor
        self._lock = threading.Lock()
        self._open: dict[int, Transfer] = {}
        self._unrecorded: list[tuple[dict[str, str | None], float | None, dt.datetime]] = []  # ends not recorded

    def of(self, event: Event) -> Transfer:
        with self._lock:
            transfer = self._open.get(id(event.assoc))
            if transfer is None:
                calling, address, tls = caller(event)
                transfer = self._open[id(event.assoc)] = Transfer(calling_ae_title=calling, address=address, tls=tls)
            return transfer

    def established(self, event: Event) -> None:
        self.of(event)

    def released(self, event: Event) -> None:
        self.of(event).released = True

    def closed(self, event: Event) -> None:
        with self._lock:
            transfer = self._open.pop(id(event.assoc), None)
        if transfer is None:
            return  # never established: refused at negotiation (audited then) or dropped before
        self._audit(transfer)
        if not transfer.series:
            return
        outcomes = transfer.outcomes()
        for uid, reason in outcomes.items():
            if reason:
                log.warning("series %s may be partial: %s; it waits for the sender's retry", uid, printable(reason))
        settle = self.settle_for(transfer.calling_ae_title)
        try:
            with self.writing:
                ingest.release_series(self.db, outcomes, settle_seconds=settle, started_at=transfer.started_at)
        except Exception as exc:
            log.error("cannot record the end of an association for %s (%s); trying again later", sorted(outcomes),
                      one_line(exc))
            with self._lock:
                self._unrecorded.append((outcomes, settle, transfer.started_at))

    def _audit(self, transfer: Transfer) -> None:
        ending = "released" if transfer.released else "aborted or lost"
        detail = f"{transfer.stored} instances stored, {transfer.refusals} refused; {ending}"
        series = ", ".join(sorted(transfer.series))
        try:
            with self.writing:
                audit.record(self.db, self.actor, "association", "accepted", subject=series[:128] or None,
                             detail=detail, calling_ae_title=transfer.calling_ae_title[:16],
                             address=transfer.address[:64], tls=transfer.tls)
        except Exception as exc:
            log.error("cannot audit an association from %s: %s", printable(transfer.calling_ae_title, 16),
                      one_line(exc))

    def record_pending(self) -> None:
        """Record the ends of associations the database refused when they closed (a lock, an outage): until
        then their series cannot settle."""
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for n, (outcomes, settle, started_at) in enumerate(pending):
            try:
                with self.writing:
                    ingest.release_series(self.db, outcomes, settle_seconds=settle, started_at=started_at)
            except Exception:
                with self._lock:
                    self._unrecorded.extend(pending[n:])
                raise
