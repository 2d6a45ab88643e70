"""Aggregates over the queue, for the status page's overview and the Prometheus collector: jobs per state,
the queue's depth and age, stage times (percentiles and histograms), deliveries per state and those
still waiting. Read-only, like ``db.monitor``, and computed from the database when asked, so that every
worker on every machine sharing the database is counted and nothing is lost when a process restarts."""

from __future__ import annotations

import collections
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select

from db.engine import Database
from db.models import Delivery, Job, JobEvent, Result, Series, Study, utcnow
from db.states import DeliveryState, JobEventKind, JobState

# Upper bounds (seconds) of the stage-time histogram buckets: a quick assembly to a slow CPU inference.
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)
INFERENCE_STAGE = "segment"  # the stage that runs the model
WAITING = (DeliveryState.PENDING, DeliveryState.SENDING)


@dataclass(frozen=True)
class QueueDepth:
    queued: int  # jobs waiting for a worker, due now or backing off after a failed attempt
    due: int  # of which a worker may claim now
    oldest_due_since: dt.datetime | None  # since when the due job that has waited longest may be claimed

    def oldest_age_seconds(self, now: dt.datetime) -> float:
        """How long the longest-waiting due job has waited for a worker (0 when none is due): a job backing
        off after a failed attempt is not waiting for one."""
        return max(0.0, (now - self.oldest_due_since).total_seconds()) if self.oldest_due_since else 0.0


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (Prometheus' ``le``), with the total count and sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class StageTimes:
    stage: str
    count: int
    p50: float
    p95: float


@dataclass(frozen=True)
class WaitingDelivery:
    job_id: int
    patient_id: str
    kind: str  # of the result
    destination: str
    state: str
    attempts: int
    last_status: int | None
    created_at: dt.datetime
    not_before: dt.datetime
    error: str | None


def job_states(db: Database, since: dt.datetime | None = None) -> dict[str, int]:
    """Jobs per state (every state present, zeros included); only jobs created ``since``, when given."""
    with db.read() as session:
        if since is None:  # counted in the state index
            found = {state: int(n) for state, n in session.execute(select(Job.state, func.count())
                                                                    .group_by(Job.state))}
        else:  # the few recent jobs, found by the creation-time index
            found = dict(collections.Counter(session.scalars(select(Job.state).where(Job.created_at >= since))))
    return {state.value: found.pop(state.value, 0) for state in JobState} | found


def queue_depth(db: Database, now: dt.datetime | None = None) -> QueueDepth:
    now = now or utcnow()
    with db.read() as session:
        queued, due, oldest = session.execute(
            select(func.count(), func.coalesce(func.sum(case((Job.not_before <= now, 1), else_=0)), 0),
                   func.min(case((Job.not_before <= now, Job.not_before), else_=None)))
            .where(Job.state == JobState.QUEUED)).one()
    return QueueDepth(int(queued), int(due), oldest)


def delivery_states(db: Database) -> dict[tuple[str, str], int]:
    """Deliveries per (state, destination)."""
    with db.read() as session:
        rows = session.execute(select(Delivery.state, Delivery.destination, func.count())
                               .group_by(Delivery.state, Delivery.destination))
        return {(state, destination): int(n) for state, destination, n in rows}


def oldest_waiting_delivery(db: Database) -> dt.datetime | None:
    """When the oldest delivery not yet sent was created (its result made)."""
    with db.read() as session:
        return session.scalar(select(func.min(Delivery.created_at)).where(Delivery.state.in_(WAITING)))


def waiting_deliveries(db: Database, limit: int = 50) -> list[WaitingDelivery]:
    """Deliveries not sent yet, oldest first."""
    query = (select(Delivery, Result.kind, Result.job_id, Study.patient_id)
             .join(Result, Delivery.result_id == Result.id).join(Job, Result.job_id == Job.id)
             .join(Series, Job.series_id == Series.id).join(Study, Series.study_id == Study.id)
             .where(Delivery.state.in_(WAITING)).order_by(Delivery.id).limit(limit))
    with db.read() as session:
        return [WaitingDelivery(job_id, patient_id, kind, d.destination, d.state, d.attempts, d.last_status,
                                d.created_at, d.not_before, d.error)
                for d, kind, job_id, patient_id in session.execute(query)]


def _histogram_columns(bounds: Sequence[float]) -> list[Any]:
    seconds = JobEvent.seconds
    return [func.count(), func.coalesce(func.sum(seconds), 0.0),
            *[func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in bounds]]


def _histograms(rows: Sequence[Sequence[Any]], bounds: Sequence[float]) -> dict[str, Histogram]:
    return {str(key): Histogram(tuple(bounds), tuple(int(n) for n in counts), int(count), float(total))
            for key, count, total, *counts in rows}


_STAGE_ROWS = (JobEvent.kind == JobEventKind.STAGE, JobEvent.seconds.is_not(None), JobEvent.stage.is_not(None))


def stage_histograms(db: Database, bounds: Sequence[float] = STAGE_BUCKETS,
                     up_to: int | None = None) -> dict[str, Histogram]:
    """Seconds per stage over every attempt recorded (``job_events`` rows of kind ``stage``), up to the
    event id ``up_to`` when given. A scan of every event: the metrics do it once, then add new rows."""
    query = select(JobEvent.stage, *_histogram_columns(bounds)).where(*_STAGE_ROWS).group_by(JobEvent.stage)
    if up_to is not None:
        query = query.where(JobEvent.id <= up_to)
    with db.read() as session:
        return _histograms(session.execute(query).all(), bounds)


def inference_histograms(db: Database, bounds: Sequence[float] = STAGE_BUCKETS,
                         up_to: int | None = None) -> dict[str, Histogram]:
    """Seconds of the model's stage per model (the job's model), up to the event id ``up_to`` when given."""
    model = func.coalesce(Job.model, "unknown")
    query = (select(model, *_histogram_columns(bounds)).join(Job, JobEvent.job_id == Job.id)
             .where(*_STAGE_ROWS, JobEvent.stage == INFERENCE_STAGE).group_by(model))
    if up_to is not None:
        query = query.where(JobEvent.id <= up_to)
    with db.read() as session:
        return _histograms(session.execute(query).all(), bounds)


@dataclass(frozen=True)
class StageObservation:
    event_id: int
    stage: str
    model: str
    seconds: float


def last_event_id(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.max(JobEvent.id))) or 0)


def stage_observations(db: Database, after: int) -> list[StageObservation]:
    """Stage times recorded in events with an id above ``after`` (a range of the primary key)."""
    query = (select(JobEvent.id, JobEvent.stage, func.coalesce(Job.model, "unknown"), JobEvent.seconds)
             .join(Job, JobEvent.job_id == Job.id).where(JobEvent.id > after, *_STAGE_ROWS).order_by(JobEvent.id))
    with db.read() as session:
        return [StageObservation(int(i), str(stage), str(model), float(seconds or 0.0))
                for i, stage, model, seconds in session.execute(query)]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolated linearly between the nearest ranks."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stage_times(db: Database, since: dt.datetime) -> list[StageTimes]:
    """Median and 95th percentile of each stage's seconds over the attempts recorded ``since`` by jobs
    created ``since`` (found by the jobs' creation-time index), stages in the order they run."""
    recent = select(Job.id).where(Job.created_at >= since)
    query = (select(JobEvent.stage, JobEvent.seconds)
             .where(JobEvent.job_id.in_(recent), JobEvent.at >= since, *_STAGE_ROWS).order_by(JobEvent.id))
    values: dict[str, list[float]] = {}
    with db.read() as session:
        for stage, seconds in session.execute(query):
            values.setdefault(str(stage), []).append(float(seconds or 0.0))
    out = []
    for stage, found in values.items():
        ordered = sorted(found)
        out.append(StageTimes(stage, len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.95)))
    return out
