"""The audit trail: what crossed the node's boundary, with time and actor. Job transitions are already in
``job_events``; the ``audit`` view (migration 0004) shows both in one table for SQL."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

from sqlalchemy import select, text

from db.engine import Database
from db.models import AuditEvent, utcnow

_MERGE = dt.timedelta(minutes=1)  # identical refusals within this are counted on one row


def actor(role: str) -> str:
    """Who acts, as the trail names it: the role and the process (``receiver:host:pid``)."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def record(db: Database, who: str, kind: str, outcome: str, subject: str | None = None, detail: str = "",
           calling_ae_title: str | None = None, address: str | None = None, tls: bool | None = None) -> None:
    with db.transaction() as session:
        session.add(AuditEvent(at=utcnow(), actor=who, kind=kind, outcome=outcome, subject=subject, detail=detail,
                               calling_ae_title=calling_ae_title, address=address, tls=tls, count=1))


def record_refusal(db: Database, who: str, calling_ae_title: str, address: str, tls: bool, reason: str) -> None:
    """An association refused: counted on the previous row when the same caller was refused for the same
    reason within a minute, so a caller retrying in a loop cannot flood the database."""
    now = utcnow()
    with db.transaction() as session:
        same = session.scalar(select(AuditEvent).where(
            AuditEvent.kind == "association", AuditEvent.outcome == "refused", AuditEvent.at >= now - _MERGE,
            AuditEvent.calling_ae_title == calling_ae_title, AuditEvent.address == address,
            AuditEvent.detail == reason).order_by(AuditEvent.id.desc()).limit(1))
        if same is not None:
            same.count += 1
            return
        session.add(AuditEvent(at=now, actor=who, kind="association", outcome="refused", detail=reason,
                               calling_ae_title=calling_ae_title, address=address, tls=tls, count=1))


@dataclass(frozen=True)
class AuditRow:
    at: dt.datetime
    actor: str
    kind: str
    outcome: str
    calling_ae_title: str | None
    address: str | None
    tls: bool | None
    subject: str | None
    count: int
    detail: str


def trail(db: Database, limit: int = 200) -> list[AuditRow]:
    """The newest entries of the ``audit`` view (associations, deliveries, purges and job events)."""
    with db.read() as session:
        rows = session.execute(text(
            "SELECT at, actor, kind, outcome, calling_ae_title, address, tls, subject, count, detail FROM audit "
            "ORDER BY at DESC LIMIT :limit"), {"limit": limit}).all()
    return [AuditRow(at=_when(r[0]), actor=r[1], kind=r[2], outcome=r[3], calling_ae_title=r[4], address=r[5],
                     tls=None if r[6] is None else bool(r[6]), subject=r[7], count=int(r[8]), detail=r[9] or "")
            for r in rows]


def _when(value: object) -> dt.datetime:
    """SQLite's view hands back text; PostgreSQL a timestamp."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
