"""The schema: what was received (studies, series, instances), what was done (jobs, job events, results)
and what was sent back (deliveries).

Times are naive UTC. Paths are relative to the storage root, so several machines can share storage
mounted at different places.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.states import DeliveryState, JobState, SeriesState


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[list["Series"]] = relationship(back_populates="study")


class Series(Base):
    """A received series. ``state`` is ``receiving`` until it settles, then ``queued`` (its jobs exist) or
    ``not-routed`` (no model takes it; ``routing_note`` says why).

    ``incomplete_reason`` says why the last transfer may have left the series partial (an aborted or lost
    association, a failure status, a node restart): such a series waits longer for the sender's retry.
    """

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    # what routing rules look at, from the series' first instance
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    protocol_name: Mapped[str] = mapped_column(String(64), default="")
    image_type: Mapped[str] = mapped_column(String(128), default="")
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    settle_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # the sending peer's own
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING.value)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    incomplete_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    routing_note: Mapped[str | None] = mapped_column(Text, nullable=True)  # why no model takes it
    purged_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # its files deleted (retention)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list["Instance"]] = relationship(back_populates="series")

    __table_args__ = (Index("ix_series_state_released", "state", "released_at"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    purged_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # file deleted (retention)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One run of a model on one series, or on several series of a study (its ``inputs``, one per channel).

    States: ``waiting`` (a job of several series, until each channel has its series; ``not_before`` is
    then its deadline) → ``queued`` → ``running`` → ``succeeded``; a failed attempt goes back to
    ``queued`` with a later ``not_before`` until ``max_attempts``, then ``failed``; input that can never
    work ends ``rejected``.
    A job made because its series grew ``supersedes`` the series' previous job: its results replace that
    job's, which are retracted wherever a send of them was started (and never sent again); a previous job
    that had not started yet ends ``superseded``.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(32), nullable=True)  # where the latest attempt ran
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher is claimed first (a route's)
    route: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the route that made it
    destinations: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list; None: the default ones
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)

    series: Mapped[Series] = relationship()
    supersedes: Mapped["Job | None"] = relationship(remote_side=[id])
    events: Mapped[list["JobEvent"]] = relationship(back_populates="job", order_by="JobEvent.id")
    results: Mapped[list["Result"]] = relationship(back_populates="job", order_by="Result.id")
    inputs: Mapped[list["JobInput"]] = relationship(back_populates="job", order_by="JobInput.position")

    __table_args__ = (Index("ix_jobs_state_not_before", "state", "not_before"),
                      Index("ix_jobs_created_at", "created_at"))  # jobs of the last hour and day


class JobInput(Base):
    """One channel of a job whose model takes several series of a study (T1c, T1, T2, FLAIR): the series
    that fills it, None while the job waits for one. A job of one series has no inputs."""

    __tablename__ = "job_inputs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # the channel's place in the model's input
    channel: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True, index=True)

    job: Mapped[Job] = relationship(back_populates="inputs")
    series: Mapped[Series | None] = relationship()


class JobEvent(Base):
    """The history of a job; ``stage`` rows carry the seconds spent in each stage of an attempt."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")


class Result(Base):
    """A DICOM object a job produced (SEG or SR), stored under the storage root."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    purged_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # file deleted (retention)

    job: Mapped[Job] = relationship(back_populates="results")
    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="result")


class Delivery(Base):
    """Sending one result to one destination: ``pending`` → ``sending`` → ``delivered``, retried until then."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    result: Mapped[Result] = relationship(back_populates="deliveries")

    __table_args__ = (Index("ix_deliveries_state_not_before", "state", "not_before"),
                      Index("ix_deliveries_state_destination", "state", "destination"))  # counted per scrape


class AuditEvent(Base):
    """The audit trail of what crossed the node's boundary: each association (who, from where, TLS or not,
    accepted or refused and why, what it stored), each delivery attempt, each purge, each operator action.
    Job transitions are the ``job_events`` rows; the ``audit`` view shows both."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # the process that acted: receiver, sender, retention, operator
    kind: Mapped[str] = mapped_column(String(16))  # association, delivery, purge, operator
    outcome: Mapped[str] = mapped_column(String(16))  # accepted, refused, delivered, failed, purged, ...
    calling_ae_title: Mapped[str | None] = mapped_column(String(16), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tls: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)  # a series, delivery or job
    count: Mapped[int] = mapped_column(Integer, default=1)  # identical refusals within a minute are one row
    detail: Mapped[str] = mapped_column(Text, default="")
