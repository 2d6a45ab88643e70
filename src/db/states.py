"""The states a series, a job and a delivery go through: one vocabulary for the queue, the outbox, the
command line and the status page. Stored as their string values, so SQL reads them as words."""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    RECEIVING = "receiving"  # instances may still arrive
    QUEUED = "queued"  # settled: its jobs exist
    NOT_ROUTED = "not-routed"  # settled, and no model takes it (the series says why)


class JobState(StrEnum):
    WAITING = "waiting"  # for the other series of its study its model takes as channels (its deadline: not_before)
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # replaced by a newer job of the same series before it ran

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED, JobState.SUPERSEDED)


FINAL_JOB_STATES = tuple(state for state in JobState if state.final)


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    WITHDRAWN = "withdrawn"  # its result was superseded before it was delivered: not sent (again)


class JobEventKind(StrEnum):
    """What a ``job_events`` row records."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    STAGE = "stage"  # one stage of an attempt, with its seconds
    RETRY = "retry"
    LEASE_EXPIRED = "lease-expired"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    REQUEUED = "requeued"
    SUPERSEDED = "superseded"
    WAITING = "waiting"  # made for a channel series; the study's other channels are still missing
    CHANNEL_FILLED = "channel-filled"  # a settled series of the study became one of its channels
    SERIES_IGNORED = "series-ignored"  # a settled series of the study fits none of its unfilled channels
