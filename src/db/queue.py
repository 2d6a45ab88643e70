"""The job queue: the only code that writes a job's state.

Settled series become jobs; a worker claims one in a single transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and holds it with a lease it renews by heartbeat. A job whose
lease ran out is claimable again, so a dead worker's job is finished by another one. A failed attempt is
retried with exponential backoff until ``max_attempts``; rejected input is never retried.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from db import superseding
from db.backoff import Backoff
from db.engine import Database
from db.errors import RejectedInput
from db.models import Delivery, Instance, Job, JobEvent, Result, Series, utcnow
from db.routing import Router, SettledSeries
from db.states import FINAL_JOB_STATES, DeliveryState, JobState, SeriesState
from db.states import JobEventKind as Event


@dataclass(frozen=True)
class QueuePolicy(Backoff):
    settle_seconds: float = 5.0
    incomplete_settle_seconds: float = 600.0  # after an abort, a lost connection or a failure status
    lease_seconds: float = 60.0
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 600.0


@dataclass(frozen=True)
class ChannelInput:
    name: str
    series_instance_uid: str
    modality: str
    instance_paths: tuple[str, ...]  # relative to the storage root, not purged, in Instance.id order


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to process a job; instance paths are relative to the storage root."""

    id: int
    attempt: int
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_paths: tuple[str, ...]
    superseded: tuple[ResultFile, ...] = ()  # the replaced job's results that have or may have reached a destination
    model: str = ""  # the configured name of the model that runs it
    channels: tuple[ChannelInput, ...] = ()  # a model whose input is several series: each, the first is the above


@dataclass(frozen=True)
class ResultFile:
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: str


@dataclass(frozen=True)
class Loaded:
    """A model a worker has loaded: the version it runs and the device it runs on (recorded on the job)."""

    version: str
    device: str


REJECTION_NOTE = superseding.REJECTION_NOTE


def _event(job: Job, kind: Event, message: str = "", worker: str | None = None, stage: str | None = None,
           seconds: float | None = None) -> JobEvent:
    return JobEvent(job=job, kind=kind, message=message, worker=worker, stage=stage, seconds=seconds,
                    attempt=job.attempts, at=utcnow())


def enqueue_settled(db: Database, policy: QueuePolicy, route: Router, now: dt.datetime | None = None) -> list[int]:
    """Create the jobs ``route`` plans for every series whose association was released and that then stayed
    quiet: for its peer's settle time (or ``settle_seconds``), or ``incomplete_settle_seconds`` when the
    transfer may have left it partial, so a sender's retry comes before any result. A series no route takes
    is recorded as not routed, with the reason. A series that grew after its results were made gets, per
    model, a job that supersedes the previous one."""
    now = now or utcnow()
    created = []
    with db.transaction() as session:
        released = session.scalars(
            select(Series).where(
                Series.state == SeriesState.RECEIVING,
                Series.released_at.is_not(None),
                Series.released_at >= Series.last_received_at,
            ).with_for_update(skip_locked=True)
        ).all()
        for series in released:
            wait = policy.incomplete_settle_seconds if series.incomplete_reason else \
                series.settle_seconds if series.settle_seconds is not None else policy.settle_seconds
            if series.released_at is None or series.released_at > now - dt.timedelta(seconds=wait):
                continue
            routing = route(SettledSeries.of(series))
            if not routing.jobs:
                series.state, series.routing_note = SeriesState.NOT_ROUTED, routing.reason or "no route takes it"
                continue
            series.state, series.routing_note = SeriesState.QUEUED, None
            how = f" after an incomplete transfer ({series.incomplete_reason})" if series.incomplete_reason else ""
            for plan in routing.jobs:
                job = Job(series=series, model=plan.model, route=plan.route, priority=plan.priority,
                          destinations=json.dumps(list(plan.destinations)) if plan.destinations is not None else None,
                          state=JobState.QUEUED, max_attempts=policy.max_attempts, not_before=now, created_at=now,
                          supersedes=_replace_earlier_jobs(session, series, plan.model, now))
                session.add(job)
                session.flush()
                replaces = f"; supersedes job {job.supersedes_job_id}" if job.supersedes_job_id else ""
                by = f"; route {plan.route}" if plan.route else ""
                session.add(_event(job, Event.QUEUED, f"series settled with {series.instance_count} instances"
                                   f"{how}{by}{replaces}"))
                created.append(job.id)
    return created


def _replace_earlier_jobs(session: Session, series: Series, model: str, now: dt.datetime) -> Job | None:
    """The series' jobs of this model not yet started end ``superseded``; the latest one that made or is
    making results is the one a new job supersedes."""
    earlier = session.scalars(select(Job).where(Job.series_id == series.id, Job.model == model)
                              .order_by(Job.id.desc())).all()
    for job in earlier:
        if job.state == JobState.QUEUED:
            job.state, job.finished_at = JobState.SUPERSEDED, now
            session.add(_event(job, Event.SUPERSEDED, "the series grew before this job ran; a new job replaces it"))
    return next((job for job in earlier if job.state in (JobState.RUNNING, JobState.SUCCEEDED)), None)


def claim(db: Database, worker: str, policy: QueuePolicy, models: Mapping[str, Loaded]) -> ClaimedJob | None:
    """Take the oldest runnable job of one of the models this worker has loaded: queued and due, or running
    with an expired lease; None when there is none. A job that supersedes another withdraws the other's
    unsent deliveries here, and learns what its rejection note retracts (``superseding``)."""
    now = utcnow()
    with db.transaction() as session:
        candidates = session.scalars(
            select(Job).where(
                Job.model.in_(list(models)),
                or_(
                    and_(Job.state == JobState.QUEUED, Job.not_before <= now),
                    and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
                ),
            ).order_by(Job.priority.desc(), Job.id).limit(5).with_for_update(skip_locked=True)
        ).all()
        for job in candidates:
            if job.supersedes is not None and not JobState(job.supersedes.state).final:
                continue  # wait for the results it replaces (running, or queued for a retry) to retract them all
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
            job.model_version, job.device = models[str(job.model)].version, models[str(job.model)].device
            session.add(_event(job, Event.CLAIMED, f"attempt {job.attempts} of {job.max_attempts}", worker=worker))
            series = job.series
            paths = session.scalars(
                select(Instance.path).where(Instance.series_id == series.id, Instance.purged_at.is_(None))
                .order_by(Instance.id)
            ).all()
            retracted = tuple(ResultFile(r.kind, r.sop_class_uid, r.sop_instance_uid, r.series_instance_uid, r.path)
                              for r in superseding.withdraw(session, job.supersedes))
            return ClaimedJob(job.id, job.attempts, series.series_instance_uid, series.study.study_instance_uid,
                              series.modality, tuple(paths), retracted, model=str(job.model))
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
    """Mark the job succeeded, record its results and queue one delivery per result and destination (the
    job's own, when its route named some, else ``destinations``).

    For a job that supersedes another, the rejection note goes to every destination that has, or may have,
    one of the other's results (the rest were withdrawn when this job was claimed: ``superseding``)."""
    now = utcnow()
    with db.transaction() as session:
        job = _owned(session, job_id, worker)
        if job is None:
            return False
        job.state, job.finished_at, job.error = JobState.SUCCEEDED, now, None
        job.lease_owner = job.lease_expires_at = None
        if job.destinations is not None:
            destinations = list(json.loads(job.destinations))
        holders = superseding.holders(job.supersedes)
        for item in results:
            result = session.scalar(select(Result).where(Result.sop_instance_uid == item.sop_instance_uid))
            if result is None:
                result = Result(job=job, kind=item.kind, sop_class_uid=item.sop_class_uid,
                                sop_instance_uid=item.sop_instance_uid,
                                series_instance_uid=item.series_instance_uid, path=item.path, created_at=now)
                session.add(result)
            else:
                result.job, result.path = job, item.path
            for destination in holders if item.kind == REJECTION_NOTE else destinations:
                session.add(Delivery(result=result, destination=destination, state=DeliveryState.PENDING,
                                     not_before=now, created_at=now))
        names = ", ".join(f"{r.kind} {r.sop_instance_uid}" for r in results) or "no objects"
        replaces = f"; supersedes job {job.supersedes_job_id} (retracted at {', '.join(holders) or 'no destination'})" \
            if job.supersedes is not None else ""
        session.add(_event(job, Event.SUCCEEDED, f"{names}; delivering to {', '.join(destinations) or 'nobody'}"
                           + replaces, worker=worker))
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


def retry(db: Database, job_id: int, max_attempts: int | None = None, by: str = "operator") -> bool:
    """Put a finished job back in the queue now, with a fresh set of attempts (``ainode retry``); ``by``
    names who asked, for the audit trail. False if there is no such job or it has not finished; a job whose
    series retention purged raises ``RejectedInput`` with why (it would run on no files)."""
    now = utcnow()
    with db.transaction() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state not in FINAL_JOB_STATES:
            return False
        series = session.get(Series, job.series_id, with_for_update=True)  # retention locks it too
        if series is not None and series.purged_at is not None:
            raise RejectedInput(f"job {job_id} cannot be queued again: retention deleted the files of series "
                                f"{series.series_instance_uid} on {series.purged_at:%Y-%m-%d %H:%M} UTC; "
                                "send the series again to process it")
        previous = job.state
        job.max_attempts = job.attempts + (max_attempts or job.max_attempts)
        job.state, job.not_before, job.finished_at = JobState.QUEUED, now, None
        session.add(_event(job, Event.REQUEUED, f"retry requested (was {previous})", worker=by))
        return True

