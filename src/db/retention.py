"""Retention: patient data deleted when it has served. A series' files (its instances, and its jobs'
results) go a while after everything is done with them; the rows stay as the record, marked purged.

Done means every job of the series ended and every delivery of their results succeeded (or was withdrawn):
then ``keep_days``. A series with a failed or rejected job, or that no model took, is kept longer for
inspection (``keep_failed_days``), unless an operator retries it. A series with a job queued or running,
a delivery still to send, or still receiving, is never purged.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import AuditEvent, Instance, Job, Result, Series, utcnow
from db.states import DeliveryState, JobState, SeriesState

log = logging.getLogger("ainode.retention")

_WAITING_DELIVERIES = (DeliveryState.PENDING, DeliveryState.SENDING)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float = 7.0
    keep_failed_days: float = 30.0


@dataclass(frozen=True)
class Purgeable:
    series_instance_uid: str
    reason: str
    files: tuple[str, ...]  # relative to the storage root
    size_bytes: int


def _verdict(series: Series, jobs: list[Job], policy: RetentionPolicy, now: dt.datetime) -> str | None:
    """Why the series may go now, or None."""
    if series.state == SeriesState.RECEIVING or any(not JobState(j.state).final for j in jobs):
        return None
    results = [r for j in jobs for r in j.results]
    if any(d.state in _WAITING_DELIVERIES for r in results for d in r.deliveries):
        return None  # a delivery retries until it succeeds: its files must still be there to send
    clean = all(j.state in (JobState.SUCCEEDED, JobState.SUPERSEDED) for j in jobs) and jobs
    ends = [j.finished_at for j in jobs if j.finished_at] + [d.delivered_at for r in results for d in r.deliveries
                                                              if d.delivered_at]
    last = max(ends, default=series.released_at or series.last_received_at)
    days = policy.keep_days if clean else policy.keep_failed_days
    if now - last < dt.timedelta(days=days):
        return None
    why = "done and delivered" if clean else "ended failed, rejected or not routed"
    return f"{why} {(now - last).total_seconds() / 86400:.1f} days ago (kept {days:g} days)"


def _candidates(session: Session, policy: RetentionPolicy, now: dt.datetime,
                lock: bool) -> list[tuple[Series, list[Job], str]]:
    query = select(Series).where(Series.purged_at.is_(None), Series.state != SeriesState.RECEIVING)
    if lock:
        query = query.with_for_update(skip_locked=True)
    out = []
    for series in session.scalars(query):
        jobs = list(session.scalars(select(Job).where(Job.series_id == series.id)))
        if (reason := _verdict(series, jobs, policy, now)) is not None:
            out.append((series, jobs, reason))
    return out


def _files(session: Session, series: Series, jobs: list[Job]) -> list[Instance | Result]:
    instances = list(session.scalars(select(Instance).where(Instance.series_id == series.id,
                                                            Instance.purged_at.is_(None))))
    return [*instances, *(r for j in jobs for r in j.results if r.purged_at is None)]


def purgeable(db: Database, root: Path, policy: RetentionPolicy, now: dt.datetime | None = None) -> list[Purgeable]:
    """What a purge would delete now, and how much space it frees (``ainode purge --dry-run``)."""
    now = now or utcnow()
    with db.read() as session:
        found = []
        for series, jobs, reason in _candidates(session, policy, now, lock=False):
            files = [f.path for f in _files(session, series, jobs)]
            size = sum((root / f).stat().st_size for f in files if (root / f).is_file())
            found.append(Purgeable(series.series_instance_uid, reason, tuple(files), size))
        return found


def purge(db: Database, root: Path, policy: RetentionPolicy, actor: str,
          now: dt.datetime | None = None) -> list[Purgeable]:
    """Mark each series that may go as purged (its instances and results too), then delete their files.
    Marking first, in one transaction that locks the series, means a job created at the same moment
    cannot be given files that are about to go."""
    now = now or utcnow()
    done = []
    with db.transaction() as session:
        for series, jobs, reason in _candidates(session, policy, now, lock=True):
            rows = _files(session, series, jobs)
            done.append(Purgeable(series.series_instance_uid, reason, tuple(r.path for r in rows), 0))
            series.purged_at = now
            session.execute(update(Instance).where(Instance.series_id == series.id, Instance.purged_at.is_(None))
                            .values(purged_at=now))
            for job in jobs:
                session.execute(update(Result).where(Result.job_id == job.id, Result.purged_at.is_(None))
                                .values(purged_at=now))
            session.add(AuditEvent(at=now, actor=actor, kind="purge", outcome="purged",
                                   subject=series.series_instance_uid, detail=f"{len(rows)} files; {reason}",
                                   count=1))
    freed = []
    for item in done:
        size = 0
        for relative in item.files:
            path = root / relative
            try:
                size += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot delete %s: %s", relative, exc.strerror or exc)
        freed.append(Purgeable(item.series_instance_uid, item.reason, item.files, size))
    return freed
