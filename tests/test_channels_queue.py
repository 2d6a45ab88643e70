"""A model whose input is several series of one study (T1c, T1, T2, FLAIR): the queue waits for a series
per channel, makes one job of them, rejects a study whose channels do not all arrive in time, and
supersedes the job when one of its series grows; on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable

import pytest
from sqlalchemy import select

from db import ingest, monitor, queue
from db.engine import Database
from db.models import Job, JobEvent, Series, utcnow
from db.routing import Channel, Planned, Router, Routing, SettledSeries
from db.states import JobState
from test_queue import MODELS as LUNG
from test_queue import POLICY, ROUTE

MODELS = {"brats": queue.Loaded("1.0", "cpu"), **LUNG}
STUDY = "1.2.3"
DESCRIPTIONS = {"T1c": "AX T1 POST", "T1": "AX T1", "T2": "AX T2", "FLAIR": "AX FLAIR"}
PATTERNS = {"T1c": r"(?i)t1.*post", "T1": r"(?i)^ax t1$", "T2": r"(?i)t2", "FLAIR": r"(?i)flair"}


def _condition(pattern: str) -> Callable[[SettledSeries], str | None]:
    def failing(series: SettledSeries) -> str | None:
        if re.search(pattern, series.series_description):
            return None
        return f"SeriesDescription {series.series_description!r} does not match /{pattern}/"
    return failing


CHANNELS = tuple(Channel(name, _condition(pattern)) for name, pattern in PATTERNS.items())


def BRAIN(series: SettledSeries) -> Routing:  # noqa: N802 - a constant of the tests
    return Routing((Planned("brats", "brain", channels=CHANNELS, channel_wait_seconds=600),))


def receive(db: Database, series: str, description: str, at: dt.datetime, study: str = STUDY, n: int = 2) -> None:
    for i in range(1, n + 1):
        ingest.record_instance(db, ingest.ReceivedInstance(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=f"{series}.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="MR",
            path=f"incoming/{series}.{i}.dcm", size_bytes=10, calling_ae_title="MRI", patient_id="P1",
            series_description=description), now=at)


def settle(db: Database, *series: str, at: dt.datetime, study: str = STUDY, route: Router = BRAIN) -> list[int]:
    """The series arrive (named by channel: "T1c" is series STUDY.T1c) and settle in one pass."""
    for name in series:
        receive(db, f"{study}.{name}", DESCRIPTIONS.get(name, name), at, study)
    ingest.release_series(db, {f"{study}.{name}": None for name in series}, now=at)
    return queue.enqueue_settled(db, POLICY, route, now=at + dt.timedelta(seconds=10))


def jobs(db: Database) -> list[tuple[str, list[tuple[str, str | None]], str]]:
    with db.read() as session:
        return [(j.state, [(i.channel, i.series.series_instance_uid if i.series else None) for i in j.inputs],
                 j.series.series_instance_uid) for j in session.scalars(select(Job).order_by(Job.id))]


def kinds(db: Database, job_id: int) -> list[str]:
    with db.read() as session:
        return list(session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


FILLED = [(name, f"{STUDY}.{name}") for name in PATTERNS]


@pytest.mark.parametrize("order", [("FLAIR", "T1", "T2", "T1c"), ("T1c", "T1", "T2", "FLAIR"),
                                   ("T2", "T1c", "FLAIR", "T1")])
def test_four_series_settling_one_by_one_make_one_job_queued_when_the_last_arrives(
        database: Database, order: tuple[str, ...]) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    for k, name in enumerate(order[:-1]):
        assert settle(database, name, at=t0 + dt.timedelta(seconds=20 * k)) == []
        (state, inputs, _), = jobs(database)
        assert state == JobState.WAITING and sum(s is not None for _, s in inputs) == k + 1
    assert queue.claim(database, "w", POLICY, MODELS) is None, "a waiting job is never claimed"
    (job_id,) = settle(database, order[-1], at=t0 + dt.timedelta(seconds=80))
    assert jobs(database) == [(JobState.QUEUED, FILLED, f"{STUDY}.T1c")], "inputs in channel order, on T1c's series"
    assert kinds(database, job_id)[0] == "waiting" and kinds(database, job_id)[-1] == "queued"

    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == job_id
    assert [(c.name, c.series_instance_uid, c.modality) for c in claimed.channels] == \
        [(name, uid, "MR") for name, uid in FILLED]
    assert claimed.channels[2].instance_paths == (f"incoming/{STUDY}.T2.1.dcm", f"incoming/{STUDY}.T2.2.dcm")
    assert (claimed.series_instance_uid, claimed.instance_paths) == \
        (f"{STUDY}.T1c", claimed.channels[0].instance_paths), "the first channel's grid is the job's"
    with database.read() as session:
        assert set(session.scalars(select(Series.state))) == {"queued"}


def test_series_settling_together_fill_the_channels_of_one_job(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    assert settle(database, "T2", "FLAIR", at=t0) == []
    (job_id,) = settle(database, "T1", "T1c", at=t0 + dt.timedelta(seconds=20))
    assert jobs(database) == [(JobState.QUEUED, FILLED, f"{STUDY}.T1c")]
    assert kinds(database, job_id).count("channel-filled") == 4


def test_a_series_fitting_no_channel_makes_no_job_and_is_recorded_on_the_waiting_one(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    assert settle(database, "LOCALIZER", at=t0) == [], "it fits no channel: no job"
    assert jobs(database) == []
    settle(database, "T1", at=t0 + dt.timedelta(seconds=20))
    assert settle(database, "SCOUT", at=t0 + dt.timedelta(seconds=40)) == []
    ((state, inputs, _),) = jobs(database)
    assert state == JobState.WAITING and [s for _, s in inputs if s] == [f"{STUDY}.T1"]
    with database.read() as session:
        message = session.scalar(select(JobEvent.message).where(JobEvent.kind == "series-ignored"))
    assert message is not None and f"series {STUDY}.SCOUT 'SCOUT' fits none of the missing channels" in message
    assert "FLAIR: SeriesDescription 'SCOUT' does not match /(?i)flair/" in message


def test_two_studies_never_mix(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    for k, name in enumerate(PATTERNS):
        settle(database, name, at=t0 + dt.timedelta(seconds=k), study="1.2.3")
        if name != "FLAIR":
            settle(database, name, at=t0 + dt.timedelta(seconds=k), study="1.2.4")
    found = jobs(database)
    assert [state for state, _, _ in found] == [JobState.QUEUED, JobState.WAITING] or \
        sorted(state for state, _, _ in found) == [JobState.QUEUED, JobState.WAITING]
    for _, inputs, _ in found:
        studies = {uid.rsplit(".", 1)[0] for _, uid in inputs if uid}
        assert len(studies) == 1


def test_a_study_whose_channels_do_not_all_arrive_is_rejected_naming_the_missing_one(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=3600)
    settle(database, "T1c", "T1", "T2", at=t0)
    assert queue.enqueue_settled(database, POLICY, BRAIN, now=t0 + dt.timedelta(seconds=300)) == []
    assert jobs(database)[0][0] == JobState.WAITING, "not yet past its deadline"
    queue.enqueue_settled(database, POLICY, BRAIN, now=t0 + dt.timedelta(seconds=611))
    ((state, _, _),) = jobs(database)
    assert state == JobState.REJECTED
    with database.read() as session:
        error = session.scalar(select(Job.error))
    assert error is not None and "\n" not in error
    assert error.startswith(f"channel FLAIR: no series of study {STUDY} fits within 600 s (")
    assert f"series {STUDY}.T2 'AX T2': fills channel T2" in error
    assert f"series {STUDY}.T1 'AX T1': fills channel T1" in error
    assert queue.claim(database, "w", POLICY, MODELS) is None


def test_a_waiting_job_shows_its_missing_channels(database: Database) -> None:
    settle(database, "T1", "FLAIR", at=utcnow() - dt.timedelta(seconds=60))
    (row,) = monitor.jobs(database)
    assert row.state == "waiting"
    assert row.missing_channels == ("T1c", "T2")
    assert row.reason == "waiting for channels T1c, T2"
    assert monitor.jobs(database, state="waiting") == [row]


def test_a_channel_series_that_grows_after_the_job_ran_gets_a_superseding_job_on_the_same_inputs(
        database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    (first,) = settle(database, *PATTERNS, at=t0)
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and queue.complete(database, claimed.id, "w", [], ["pacs"])

    receive(database, f"{STUDY}.T2", "AX T2", t0 + dt.timedelta(seconds=30), n=3)  # one more slice of T2
    ingest.release_series(database, {f"{STUDY}.T2": None}, now=t0 + dt.timedelta(seconds=30))
    (second,) = queue.enqueue_settled(database, POLICY, BRAIN, now=t0 + dt.timedelta(seconds=40))
    found = jobs(database)
    assert found == [(JobState.SUCCEEDED, FILLED, f"{STUDY}.T1c"), (JobState.QUEUED, FILLED, f"{STUDY}.T1c")]
    with database.read() as session:
        newer = session.get(Job, second)
        assert newer is not None and newer.supersedes_job_id == first
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == second and len(claimed.channels[2].instance_paths) == 3


def test_a_channel_series_that_grows_before_the_job_ran_supersedes_the_queued_one(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    (first,) = settle(database, *PATTERNS, at=t0)
    receive(database, f"{STUDY}.FLAIR", "AX FLAIR", t0 + dt.timedelta(seconds=30), n=3)
    ingest.release_series(database, {f"{STUDY}.FLAIR": None}, now=t0 + dt.timedelta(seconds=30))
    (second,) = queue.enqueue_settled(database, POLICY, BRAIN, now=t0 + dt.timedelta(seconds=40))
    assert [state for state, _, _ in jobs(database)] == [JobState.SUPERSEDED, JobState.QUEUED]
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == second and claimed.superseded == (), "the first never ran"


def test_a_plan_of_one_series_is_as_before(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=300)
    (job_id,) = settle(database, "T1", at=t0, route=ROUTE)
    assert jobs(database) == [(JobState.QUEUED, [], f"{STUDY}.T1")]
    assert kinds(database, job_id) == ["queued"]
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.channels == ()


def test_every_order_of_four_series_makes_the_same_job(database: Database) -> None:
    """Orders beyond the three above, settling two at a time."""
    for n, order in enumerate(itertools.islice(itertools.permutations(PATTERNS), 0, 24, 7)):
        study = f"1.2.{10 + n}"
        t0 = utcnow() - dt.timedelta(seconds=300)
        assert settle(database, *order[:2], at=t0, study=study) == []
        (job_id,) = settle(database, *order[2:], at=t0 + dt.timedelta(seconds=20), study=study)
        with database.read() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert [i.series.series_instance_uid for i in job.inputs if i.series] == \
                [f"{study}.{name}" for name in PATTERNS]
