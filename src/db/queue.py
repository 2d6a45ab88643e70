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

from db import channels, superseding
from db.backoff import Backoff
from db.engine import Database
from db.errors import RejectedInput
from db.models import Delivery, Instance, Job, JobEvent, JobInput, Result, Series, Study, utcnow
from db.routing import Planned, Router, SettledSeries
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
    channels: tuple[ChannelInput, ...] = ()  # a model of several series: one per channel, the first's grid above


@dataclass(frozen=True)
class ChannelInput:
    name: str
    series_instance_uid: str
    modality: str
    instance_paths: tuple[str, ...]  # relative to the storage root, not purged, in Instance.id order


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
    model, a job that supersedes the previous one. A model with channels gets one job per study that waits
    for a series per channel (``_enqueue_channel``), rejected past its deadline. Returns the jobs queued."""
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
                if plan.channels:
                    created += _enqueue_channel(session, series, plan, policy, now)
                    continue
                job = _job(series, plan, policy, JobState.QUEUED, now, now,
                           _replace_earlier_jobs(session, series, plan.model, now))
                session.add(job)
                session.flush()
                replaces = f"; supersedes job {job.supersedes_job_id}" if job.supersedes_job_id else ""
                by = f"; route {plan.route}" if plan.route else ""
                session.add(_event(job, Event.QUEUED, f"series settled with {series.instance_count} instances"
                                   f"{how}{by}{replaces}"))
                created.append(job.id)
        _reject_overdue(session, route, now)
    return created


def _job(series: Series, plan: Planned, policy: QueuePolicy, state: JobState, now: dt.datetime,
         not_before: dt.datetime, supersedes: Job | None = None) -> Job:
    return Job(series=series, model=plan.model, route=plan.route, priority=plan.priority,
               destinations=json.dumps(list(plan.destinations)) if plan.destinations is not None else None,
               state=state, max_attempts=policy.max_attempts, not_before=not_before, created_at=now,
               supersedes=supersedes)


def _enqueue_channel(session: Session, series: Series, plan: Planned, policy: QueuePolicy,
                     now: dt.datetime) -> list[int]:
    """A settled series for a model of several series: it fills a channel of the study's waiting job; or,
    when it is a channel of an earlier job, it grew, and a job on the same inputs supersedes that one; or it
    starts a waiting job, with the study's series settled before it. Returns the job if it is now queued."""
    session.get(Study, series.study_id, with_for_update=True)  # one node at a time decides for a study
    settled = SettledSeries.of(series)
    study_jobs = (select(Job).join(Series, Job.series_id == Series.id).order_by(Job.id.desc())
                  .where(Series.study_id == series.study_id, Job.model == plan.model,
                         Job.route.is_not_distinct_from(plan.route)))
    waiting = session.scalars(study_jobs.where(Job.state == JobState.WAITING)).first()
    by_name = {c.name: c for c in plan.channels}
    if waiting is not None:
        empty = [(i.position, by_name[i.channel]) for i in waiting.inputs
                 if i.series_id is None and i.channel in by_name]
        taken = any(i.series_id == series.id for i in waiting.inputs)
        fills = {} if taken else channels.assign(empty, [(series.id, settled)])
        if not fills:
            session.add(_event(waiting, Event.SERIES_IGNORED, channels.unfitted(settled, [c for _, c in empty])))
            return []
        return _fill(waiting, {position: series for position in fills}, now, session)
    ran = next((job for job in session.scalars(study_jobs.where(Job.inputs.any(JobInput.series_id == series.id)))
                if all(i.series_id is not None for i in job.inputs)), None)
    if ran is not None:
        job = _job(ran.series, plan, policy, JobState.QUEUED, now, now,
                   _replace_earlier_jobs(session, series, plan.model, now))
        session.add(job)
        for i in ran.inputs:
            session.add(JobInput(job=job, position=i.position, channel=i.channel, series_id=i.series_id))
        session.flush()
        session.add(_event(job, Event.QUEUED, f"series {series.series_instance_uid} grew to {series.instance_count} "
                           f"instances; the same channels again; supersedes job {job.supersedes_job_id}"))
        return [job.id]
    others = session.scalars(select(Series).where(Series.study_id == series.study_id, Series.id != series.id,
                                                  Series.state != SeriesState.RECEIVING)).all()
    candidates = {s.id: s for s in sorted([series, *others], key=lambda s: s.id)}
    fills = channels.assign(list(enumerate(plan.channels)), [(k, SettledSeries.of(s)) for k, s in candidates.items()])
    if series.id not in fills.values():
        return []  # it fits none of the channels the study's earlier series left empty
    job = _job(series, plan, policy, JobState.WAITING, now, now + dt.timedelta(seconds=plan.channel_wait_seconds))
    session.add(job)
    for position, channel in enumerate(plan.channels):
        session.add(JobInput(job=job, position=position, channel=channel.name))
    session.flush()
    by = f"; route {plan.route}" if plan.route else ""
    session.add(_event(job, Event.WAITING, f"study {series.study.study_instance_uid}: waiting up to "
                       f"{plan.channel_wait_seconds:g} s for a series per channel "
                       f"({', '.join(by_name)}){by}"))
    return _fill(job, {position: candidates[key] for position, key in fills.items()}, now, session)


def _fill(job: Job, fills: Mapping[int, Series], now: dt.datetime, session: Session) -> list[int]:
    """Put each series in its channel; a job whose channels are all filled is queued, on the first's series."""
    for i in job.inputs:
        if i.position in fills:
            i.series = fills[i.position]
            session.add(_event(job, Event.CHANNEL_FILLED, f"channel {i.channel}: series "
                               f"{i.series.series_instance_uid} ({i.series.instance_count} instances)"))
    first = job.inputs[0].series
    if first is None or any(i.series is None for i in job.inputs):
        return []
    job.series = first
    job.state, job.not_before = JobState.QUEUED, now
    session.add(_event(job, Event.QUEUED, "every channel has its series: " + ", ".join(
        f"{i.channel} {i.series.series_instance_uid}" for i in job.inputs if i.series is not None)))
    return [job.id]


def _reject_overdue(session: Session, route: Router, now: dt.datetime) -> None:
    """Waiting jobs past their deadline end ``rejected``, naming each empty channel and why each of the
    study's settled series stayed out of it."""
    for job in session.scalars(select(Job).where(Job.state == JobState.WAITING, Job.not_before <= now)
                               .with_for_update(skip_locked=True)).all():
        study = job.series.study
        settled = [s for s in sorted(study.series, key=lambda s: s.id) if s.state != SeriesState.RECEIVING]
        plan = channels.plan_of(route, [SettledSeries.of(s) for s in settled], job.model, job.route)
        filled = {i.series_id: i.channel for i in job.inputs if i.series_id is not None}
        job.error = channels.overdue([i.channel for i in job.inputs if i.series_id is None],
                                     plan.channels if plan else (), study.study_instance_uid,
                                     (job.not_before - job.created_at).total_seconds(),
                                     [(SettledSeries.of(s), filled.get(s.id)) for s in settled])
        job.state, job.finished_at = JobState.REJECTED, now
        session.add(_event(job, Event.REJECTED, job.error))


def _replace_earlier_jobs(session: Session, series: Series, model: str, now: dt.datetime) -> Job | None:
    """The jobs of this model on the series (or with it as a channel) not yet started end ``superseded``;
    the latest one that made or is making results is the one a new job supersedes."""
    earlier = session.scalars(select(Job).where(
        or_(Job.series_id == series.id, Job.inputs.any(JobInput.series_id == series.id)), Job.model == model,
        Job.state != JobState.WAITING).order_by(Job.id.desc())).all()
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
            retracted = tuple(ResultFile(r.kind, r.sop_class_uid, r.sop_instance_uid, r.series_instance_uid, r.path)
                              for r in superseding.withdraw(session, job.supersedes))
            inputs = tuple(ChannelInput(i.channel, i.series.series_instance_uid, i.series.modality,
                                        _paths(session, i.series)) for i in job.inputs if i.series is not None)
            return ClaimedJob(job.id, job.attempts, series.series_instance_uid, series.study.study_instance_uid,
                              series.modality, _paths(session, series), retracted, model=str(job.model),
                              channels=inputs)
    return None


def _paths(session: Session, series: Series) -> tuple[str, ...]:
    return tuple(session.scalars(select(Instance.path).where(Instance.series_id == series.id,
                                                             Instance.purged_at.is_(None)).order_by(Instance.id)))
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
        for series_id in sorted({job.series_id, *(i.series_id for i in job.inputs if i.series_id is not None)}):
            series = session.get(Series, series_id, with_for_update=True)  # retention locks it too
            if series is not None and series.purged_at is not None:
                break
        if series is not None and series.purged_at is not None:
            raise RejectedInput(f"job {job_id} cannot be queued again: retention deleted the files of series "
                                f"{series.series_instance_uid} on {series.purged_at:%Y-%m-%d %H:%M} UTC; "
                                "send the series again to process it")
        previous = job.state
        job.max_attempts = job.attempts + (max_attempts or job.max_attempts)
        job.state, job.not_before, job.finished_at = JobState.QUEUED, now, None
        session.add(_event(job, Event.REQUEUED, f"retry requested (was {previous})", worker=by))
        return True

