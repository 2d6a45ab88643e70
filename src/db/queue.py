"""The job queue: the only code that writes a job's state.

Settled series become jobs; a worker claims one in a single transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and holds it with a lease it renews by heartbeat. A job whose
lease ran out is claimable again, so a dead worker's job is finished by another one. A failed attempt is
retried with exponential backoff until ``max_attempts``; rejected input is never retried.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from db.backoff import exponential
from db.engine import Database
from db.models import Delivery, Instance, Job, JobEvent, Result, Series, utcnow
from db.states import FINAL_JOB_STATES, DeliveryState, JobState, SeriesState
from db.states import JobEventKind as Event


@dataclass(frozen=True)
class QueuePolicy:
    settle_seconds: float = 5.0
    lease_seconds: float = 60.0
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 600.0

    def backoff(self, attempts: int) -> dt.timedelta:
        return exponential(self.backoff_seconds, self.backoff_max_seconds, attempts)


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to process a job; instance paths are relative to the storage root."""

    id: int
    attempt: int
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_paths: tuple[str, ...]


@dataclass(frozen=True)
class ResultFile:
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: str


def _event(job: Job, kind: Event, message: str = "", worker: str | None = None, stage: str | None = None,
           seconds: float | None = None) -> JobEvent:
    return JobEvent(job=job, kind=kind, message=message, worker=worker, stage=stage, seconds=seconds,
                    attempt=job.attempts, at=utcnow())


def enqueue_settled(db: Database, policy: QueuePolicy, now: dt.datetime | None = None) -> list[int]:
    """Create a job for every series whose association was released and that then stayed quiet."""
    now = now or utcnow()
    limit = now - dt.timedelta(seconds=policy.settle_seconds)
    created = []
    with db.transaction() as session:
        settled = session.scalars(
            select(Series).where(
                Series.state == SeriesState.RECEIVING,
                Series.released_at.is_not(None),
                Series.released_at >= Series.last_received_at,
                Series.released_at <= limit,
            ).with_for_update(skip_locked=True)
        ).all()
        for series in settled:
            series.state = SeriesState.QUEUED
            job = Job(series=series, state=JobState.QUEUED, max_attempts=policy.max_attempts, not_before=now,
                      created_at=now)
            session.add(job)
            session.flush()
            session.add(_event(job, Event.QUEUED, f"series settled with {series.instance_count} instances"))
            created.append(job.id)
    return created


def claim(db: Database, worker: str, policy: QueuePolicy, model: str, model_version: str) -> ClaimedJob | None:
    """Take the oldest runnable job (queued and due, or running with an expired lease), or None."""
    now = utcnow()
    with db.transaction() as session:
        candidates = session.scalars(
            select(Job).where(
                or_(
                    and_(Job.state == JobState.QUEUED, Job.not_before <= now),
                    and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
                )
            ).order_by(Job.id).limit(5).with_for_update(skip_locked=True)
        ).all()
        for job in candidates:
            if job.state == JobState.RUNNING:
                reason = f"worker {job.lease_owner} stopped renewing its lease (attempt {job.attempts})"
                session.add(_event(job, Event.LEASE_EXPIRED, reason, worker=job.lease_owner))
                if job.attempts >= job.max_attempts:
                    job.state, job.finished_at, job.lease_owner = JobState.FAILED, now, None
                    job.error = f"{reason}; no attempts left"
                    session.add(_event(job, Event.FAILED, job.error))
                    continue
            job.state = JobState.RUNNING
            job.attempts += 1
            job.lease_owner = worker
            job.lease_expires_at = now + dt.timedelta(seconds=policy.lease_seconds)
            job.started_at = job.started_at or now
            job.model, job.model_version = model, model_version
            session.add(_event(job, Event.CLAIMED, f"attempt {job.attempts} of {job.max_attempts}", worker=worker))
            series = job.series
            paths = session.scalars(
                select(Instance.path).where(Instance.series_id == series.id).order_by(Instance.id)
            ).all()
            return ClaimedJob(job.id, job.attempts, series.series_instance_uid, series.study.study_instance_uid,
                              series.modality, tuple(paths))
    return None


def _owned(session: Session, job_id: int, worker: str) -> Job | None:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != worker:
        return None
    return job


def heartbeat(db: Database, job_id: int, worker: str, policy: QueuePolicy) -> bool:
    """Extend the lease; False when the job is no longer this worker's (taken over or reset)."""
    with db.transaction() as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == worker)
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=policy.lease_seconds))
        )
        return cast(CursorResult[Any], result).rowcount == 1


def record_stage(db: Database, job_id: int, worker: str, stage: str, seconds: float, message: str = "") -> None:
    with db.transaction() as session:
        job = session.get(Job, job_id)
        if job is not None:
            session.add(_event(job, Event.STAGE, message, worker=worker, stage=stage, seconds=seconds))


def complete(db: Database, job_id: int, worker: str, results: list[ResultFile], destinations: list[str]) -> bool:
    """Mark the job succeeded, record its results and queue one delivery per result and destination."""
    now = utcnow()
    with db.transaction() as session:
        job = _owned(session, job_id, worker)
        if job is None:
            return False
        job.state, job.finished_at, job.error = JobState.SUCCEEDED, now, None
        job.lease_owner = job.lease_expires_at = None
        for item in results:
            result = session.scalar(select(Result).where(Result.sop_instance_uid == item.sop_instance_uid))
            if result is None:
                result = Result(job=job, kind=item.kind, sop_class_uid=item.sop_class_uid,
                                sop_instance_uid=item.sop_instance_uid,
                                series_instance_uid=item.series_instance_uid, path=item.path, created_at=now)
                session.add(result)
            else:
                result.job, result.path = job, item.path
            for destination in destinations:
                session.add(Delivery(result=result, destination=destination, state=DeliveryState.PENDING,
                                     not_before=now, created_at=now))
        names = ", ".join(f"{r.kind} {r.sop_instance_uid}" for r in results) or "no objects"
        session.add(_event(job, Event.SUCCEEDED, f"{names}; delivering to {', '.join(destinations) or 'nobody'}",
                           worker=worker))
        return True


def fail(db: Database, job_id: int, worker: str, reason: str, policy: QueuePolicy, retry: bool = True) -> str | None:
    """Record a failed attempt: back to the queue with backoff, ``failed`` after the last, ``rejected`` if
    ``retry`` is False. Returns the new state, or None when the job was not this worker's any more."""
    now = utcnow()
    with db.transaction() as session:
        job = _owned(session, job_id, worker)
        if job is None:
            return None
        job.error = reason
        job.lease_owner = job.lease_expires_at = None
        if not retry:
            job.state, job.finished_at = JobState.REJECTED, now
            session.add(_event(job, Event.REJECTED, reason, worker=worker))
        elif job.attempts >= job.max_attempts:
            job.state, job.finished_at = JobState.FAILED, now
            session.add(_event(job, Event.FAILED, f"{reason} (attempt {job.attempts} of {job.max_attempts}, "
                                              "no attempts left)", worker=worker))
        else:
            delay = policy.backoff(job.attempts)
            job.state, job.not_before = JobState.QUEUED, now + delay
            session.add(_event(job, Event.RETRY, f"{reason} (attempt {job.attempts} of {job.max_attempts}; "
                                             f"next in {delay.total_seconds():.0f} s)", worker=worker))
        return job.state


def retry(db: Database, job_id: int, max_attempts: int | None = None) -> bool:
    """Put a finished job back in the queue now, with a fresh set of attempts (``ainode retry``)."""
    now = utcnow()
    with db.transaction() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state not in FINAL_JOB_STATES:
            return False
        previous = job.state
        job.max_attempts = job.attempts + (max_attempts or job.max_attempts)
        job.state, job.not_before, job.finished_at = JobState.QUEUED, now, None
        session.add(_event(job, Event.REQUEUED, f"retry requested by an operator (was {previous})"))
        return True

