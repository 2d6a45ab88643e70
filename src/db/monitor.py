"""Read-only views of the queue for people: the job table and one job's whole story, as typed rows that
the command line and the status page both show."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import Delivery, Instance, Job, JobEvent, JobInput, Result, Series, Study
from db.states import DeliveryState, JobEventKind, JobState, SeriesState


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: int
    model: str | None
    attempts: int
    max_attempts: int
    created_at: dt.datetime
    finished_at: dt.datetime | None
    stage_seconds: dict[str, float]
    error: str | None
    supersedes: int | None = None  # the job whose results this one replaces
    delivery_states: dict[str, int] = field(default_factory=dict)  # deliveries of its results, per state
    patient_name: str = ""
    series_description: str = ""
    missing_channels: tuple[str, ...] = ()  # a waiting job's channels no series of the study filled yet

    @property
    def reason(self) -> str:
        """What people read beside the state: why it failed, or what a waiting job still waits for."""
        if self.missing_channels:
            return f"waiting for channels {', '.join(self.missing_channels)}"
        return self.error or ""

    @property
    def stages(self) -> str:
        """Seconds per stage of the latest attempt, as people read them: "assemble 0.2s segment 3.2s"."""
        return " ".join(f"{name} {seconds:.1f}s" for name, seconds in self.stage_seconds.items())

    @property
    def delivered(self) -> str:
        """How far its results got: "2/2", "0/2 waiting", "-" (nothing to send); withdrawn ones not counted."""
        states = {k: v for k, v in self.delivery_states.items() if k != DeliveryState.WITHDRAWN}
        total, done = sum(states.values()), states.get(DeliveryState.DELIVERED, 0)
        if not total:
            return "-"
        return f"{done}/{total}" + ("" if done == total else " waiting")


@dataclass(frozen=True)
class EventRow:
    at: dt.datetime
    kind: str
    attempt: int
    stage: str | None
    seconds: float | None
    worker: str | None
    message: str


@dataclass(frozen=True)
class ResultRow:
    kind: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True)
class DeliveryRow:
    kind: str  # of the result delivered
    destination: str
    state: str
    attempts: int
    last_status: int | None
    delivered_at: dt.datetime | None
    error: str | None


@dataclass(frozen=True)
class JobDetail:
    row: JobRow
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    events: list[EventRow]
    results: list[ResultRow]
    deliveries: list[DeliveryRow]
    calling_ae_titles: tuple[str, ...] = ()  # who sent the series' instances


def _stage_seconds(session: Session, job_ids: list[int]) -> dict[int, dict[str, float]]:
    """Seconds per stage of each job's latest attempt."""
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.attempt, JobEvent.stage, JobEvent.seconds)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.kind == JobEventKind.STAGE).order_by(JobEvent.id)
    ).all()
    latest: dict[int, int] = {}
    for job_id, attempt, _, _ in rows:
        latest[job_id] = max(latest.get(job_id, 0), attempt)
    out: dict[int, dict[str, float]] = {}
    for job_id, attempt, stage, seconds in rows:
        if attempt == latest[job_id] and stage is not None and seconds is not None:
            out.setdefault(job_id, {})[stage] = seconds
    return out


def _delivery_states(session: Session, job_ids: list[int]) -> dict[int, dict[str, int]]:
    rows = session.execute(
        select(Result.job_id, Delivery.state, func.count()).join(Delivery, Delivery.result_id == Result.id)
        .where(Result.job_id.in_(job_ids)).group_by(Result.job_id, Delivery.state)
    ).all()
    out: dict[int, dict[str, int]] = {}
    for job_id, state, n in rows:
        out.setdefault(job_id, {})[state] = int(n)
    return out


def _missing_channels(session: Session, job_ids: list[int]) -> dict[int, tuple[str, ...]]:
    rows = session.execute(select(JobInput.job_id, JobInput.channel).where(
        JobInput.job_id.in_(job_ids), JobInput.series_id.is_(None)).order_by(JobInput.job_id, JobInput.position))
    out: dict[int, tuple[str, ...]] = {}
    for job_id, channel in rows:
        out[job_id] = (*out.get(job_id, ()), channel)
    return out


def _row(job: Job, series: Series, study: Study, stages: dict[str, float], deliveries: dict[str, int],
         missing: tuple[str, ...] = ()) -> JobRow:
    return JobRow(
        id=job.id, state=job.state, patient_id=study.patient_id, study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid, modality=series.modality, instances=series.instance_count,
        model=job.model, attempts=job.attempts, max_attempts=job.max_attempts, created_at=job.created_at,
        finished_at=job.finished_at, stage_seconds=stages, error=job.error, supersedes=job.supersedes_job_id,
        delivery_states=deliveries, patient_name=study.patient_name, series_description=series.series_description,
        missing_channels=missing if job.state == JobState.WAITING else (),
    )


def jobs(db: Database, limit: int = 50, state: str | tuple[str, ...] | None = None) -> list[JobRow]:
    """The newest jobs, in ``state`` (or any of several states) when given."""
    with db.read() as session:
        query = (select(Job, Series, Study).join(Series, Job.series_id == Series.id)
                 .join(Study, Series.study_id == Study.id).order_by(Job.id.desc()).limit(limit))
        if state:
            query = query.where(Job.state.in_((state,) if isinstance(state, str) else state))
        found = session.execute(query).all()
        ids = [job.id for job, _, _ in found]
        stages, deliveries = _stage_seconds(session, ids), _delivery_states(session, ids)
        missing = _missing_channels(session, ids)
        return [_row(job, series, study, stages.get(job.id, {}), deliveries.get(job.id, {}), missing.get(job.id, ()))
                for job, series, study in found]


def job(db: Database, job_id: int) -> JobDetail | None:
    with db.read() as session:
        found = session.get(Job, job_id)
        if found is None:
            return None
        row = _row(found, found.series, found.series.study, _stage_seconds(session, [job_id]).get(job_id, {}),
                   _delivery_states(session, [job_id]).get(job_id, {}),
                   _missing_channels(session, [job_id]).get(job_id, ()))
        events = [EventRow(e.at, e.kind, e.attempt, e.stage, e.seconds, e.worker, e.message) for e in found.events]
        results = [ResultRow(r.kind, r.sop_instance_uid, r.path) for r in found.results]
        deliveries = [
            DeliveryRow(r.kind, d.destination, d.state, d.attempts, d.last_status, d.delivered_at, d.error)
            for r in found.results for d in session.scalars(
                select(Delivery).where(Delivery.result_id == r.id).order_by(Delivery.id))
        ]
        senders = tuple(session.scalars(select(Instance.calling_ae_title).where(Instance.series_id == found.series_id)
                                        .distinct().order_by(Instance.calling_ae_title)))
        return JobDetail(row, found.lease_owner, found.lease_expires_at, events, results, deliveries, senders)


def counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {state: int(n) for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}


def delivered_results(db: Database, job_id: int) -> list[str]:
    """SOP Instance UIDs of a job's results that reached every destination."""
    with db.read() as session:
        results = session.scalars(select(Result).where(Result.job_id == job_id)).all()
        return [r.sop_instance_uid for r in results
                if r.deliveries and all(d.state == DeliveryState.DELIVERED for d in r.deliveries)]


@dataclass(frozen=True)
class UnroutedRow:
    series_instance_uid: str
    patient_id: str
    modality: str
    series_description: str
    instances: int
    released_at: dt.datetime | None
    reason: str


def not_routed(db: Database, limit: int = 20) -> list[UnroutedRow]:
    """The newest series no route (or model) took, with why: not an error, but people look for them."""
    with db.read() as session:
        found = session.execute(select(Series, Study).join(Study, Series.study_id == Study.id)
                                .where(Series.state == SeriesState.NOT_ROUTED)
                                .order_by(Series.id.desc()).limit(limit)).all()
        return [UnroutedRow(s.series_instance_uid, st.patient_id, s.modality, s.series_description, s.instance_count,
                            s.released_at, s.routing_note or "") for s, st in found]
