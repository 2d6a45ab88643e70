"""The queue on a real database (SQLite and PostgreSQL): settling, claiming, leases, retries, completion."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import database_url
from db import ingest, outbox, queue
from db.engine import Database
from db.models import Delivery, Job, JobEvent, Series, utcnow
from db.routing import Routing, SettledSeries

POLICY = queue.QueuePolicy(settle_seconds=5, lease_seconds=30, max_attempts=2, backoff_seconds=10)
MODELS = {"lung-model": queue.Loaded("1.0", "cpu")}  # what a worker has loaded


def ROUTE(series: SettledSeries) -> Routing:  # noqa: N802 - a constant of the tests
    return Routing.to("lung-model")


def receive(db: Database, series: str, sop: str, now: dt.datetime) -> bool:
    return ingest.record_instance(db, ingest.ReceivedInstance(
        study_instance_uid="1.2.3", series_instance_uid=series, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", path=f"incoming/{sop}.dcm", size_bytes=10,
        calling_ae_title="STORESCU", patient_id="P1"), now=now)


def settled_job(db: Database, series: str = "1.2.3.4") -> int:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(db, series, series + ".1", t0)
    ingest.release_series(db, {series: None}, now=t0)
    (job_id,) = queue.enqueue_settled(db, POLICY, ROUTE)
    return job_id


def test_a_series_becomes_a_job_only_after_release_and_the_settle_time(database: Database) -> None:
    t0 = utcnow()
    assert receive(database, "1.2.3.4", "1.2.3.4.1", t0)
    assert not receive(database, "1.2.3.4", "1.2.3.4.1", t0), "the same SOP Instance UID is recorded once"
    assert queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=60)) == [], "not released yet"
    ingest.release_series(database, {"1.2.3.4": None}, now=t0 + dt.timedelta(seconds=1))
    assert queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=3)) == [], "still settling"
    receive(database, "1.2.3.4", "1.2.3.4.2", t0 + dt.timedelta(seconds=4))  # a second association is sending
    assert queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=30)) == [], \
        "new data after release"
    ingest.release_series(database, {"1.2.3.4": None}, now=t0 + dt.timedelta(seconds=5))
    jobs = queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=11))
    assert len(jobs) == 1
    assert queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=20)) == [], "one job per settle"
    with database.transaction() as session:
        series = session.scalar(select(Series))
        assert (series.state, series.instance_count) == ("queued", 2)


def test_series_left_receiving_by_a_stopped_node_settle_after_restart_as_possibly_partial(
        database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, "1.2.3.4", "1.2.3.4.1", t0)  # the association never ended: the node was killed
    assert queue.enqueue_settled(database, POLICY, ROUTE) == []
    assert ingest.release_abandoned(database, now=t0) == 1
    assert queue.enqueue_settled(database, POLICY, ROUTE) == [], "the sender may still retry: wait longer"
    assert len(queue.enqueue_settled(database, POLICY, ROUTE, now=t0 + dt.timedelta(seconds=601))) == 1
    assert ingest.release_abandoned(database) == 0


def test_a_resent_series_makes_no_new_job_but_new_instances_do(database: Database) -> None:
    settled_job(database)
    t1 = utcnow() - dt.timedelta(seconds=30)
    receive(database, "1.2.3.4", "1.2.3.4.1", t1)  # duplicate
    ingest.release_series(database, {"1.2.3.4": None}, now=t1)
    assert queue.enqueue_settled(database, POLICY, ROUTE) == []
    receive(database, "1.2.3.4", "1.2.3.4.9", t1)  # new instance
    ingest.release_series(database, {"1.2.3.4": None}, now=t1)
    assert len(queue.enqueue_settled(database, POLICY, ROUTE)) == 1


def test_claim_heartbeat_complete_records_results_and_deliveries(database: Database) -> None:
    job_id = settled_job(database)
    claimed = queue.claim(database, "w1", POLICY, MODELS)
    assert claimed is not None and claimed.id == job_id and claimed.attempt == 1
    assert claimed.instance_paths == ("incoming/1.2.3.4.1.dcm",)
    assert queue.claim(database, "w2", POLICY, MODELS) is None, "a running job is not claimed twice"
    assert queue.heartbeat(database, job_id, "w1", POLICY)
    assert not queue.heartbeat(database, job_id, "w2", POLICY)
    queue.record_stage(database, job_id, "w1", "segment", 1.5, "ok")
    results = [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.9.1", "9.9", "results/a.dcm"),
               queue.ResultFile("SR", "1.2.840.10008.5.1.4.1.1.88.34", "9.8.1", "9.8", "results/b.dcm")]
    assert not queue.complete(database, job_id, "w2", results, ["pacs"]), "only the lease holder completes"
    assert queue.complete(database, job_id, "w1", results, ["pacs", "archive"])
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.model, job.model_version, job.device, job.lease_owner) == (
            "succeeded", "lung-model", "1.0", "cpu", None)
        destinations = sorted(d.destination for d in session.scalars(select(Delivery)))
        assert destinations == ["archive", "archive", "pacs", "pacs"]
        events = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        kinds = [e.kind for e in session.scalars(events)]
        assert kinds == ["queued", "claimed", "stage", "succeeded"]


def test_failures_back_off_then_fail_with_the_reason(database: Database) -> None:
    job_id = settled_job(database)
    queue.claim(database, "w1", POLICY, MODELS)
    assert queue.fail(database, job_id, "w1", "CUDA out of memory", POLICY) == "queued"
    assert queue.claim(database, "w1", POLICY, MODELS) is None, "backoff: not due yet"
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert dt.timedelta(seconds=9) < job.not_before - utcnow() <= dt.timedelta(seconds=10)
        job.not_before = utcnow() - dt.timedelta(seconds=1)
    assert queue.claim(database, "w1", POLICY, MODELS).attempt == 2
    assert queue.fail(database, job_id, "w1", "CUDA out of memory", POLICY) == "failed"
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and job.error == "CUDA out of memory" and job.attempts == 2
    assert queue.retry(database, job_id)
    assert queue.claim(database, "w1", POLICY, MODELS).attempt == 3, "an operator's retry gives new attempts"


def test_rejected_input_is_not_retried(database: Database) -> None:
    job_id = settled_job(database)
    queue.claim(database, "w1", POLICY, MODELS)
    assert queue.fail(database, job_id, "w1", "missing slice", POLICY, retry=False) == "rejected"
    assert queue.claim(database, "w1", POLICY, MODELS) is None


def test_an_expired_lease_is_taken_over_and_the_old_worker_cannot_finish(database: Database) -> None:
    job_id = settled_job(database)
    queue.claim(database, "dead", POLICY, MODELS)
    with database.transaction() as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - dt.timedelta(seconds=1)
    taken = queue.claim(database, "alive", POLICY, MODELS)
    assert taken is not None and taken.attempt == 2
    assert not queue.heartbeat(database, job_id, "dead", POLICY)
    assert not queue.complete(database, job_id, "dead", [], ["pacs"])
    assert queue.complete(database, job_id, "alive", [], ["pacs"])
    with database.transaction() as session:
        kinds = [e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert "lease-expired" in kinds


def test_an_expired_lease_on_the_last_attempt_fails_the_job(database: Database) -> None:
    job_id = settled_job(database)
    for worker in ("a", "b"):
        queue.claim(database, worker, POLICY, MODELS)
        with database.transaction() as session:
            session.get(Job, job_id).lease_expires_at = utcnow() - dt.timedelta(seconds=1)
    assert queue.claim(database, "c", POLICY, MODELS) is None
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and "stopped renewing its lease" in job.error


def _claim_all(url: str, name: str, out: "multiprocessing.Queue[list[int]]") -> None:
    db = Database(url)
    got = []
    policy = queue.QueuePolicy(lease_seconds=600)
    while (job := queue.claim(db, name, policy, MODELS)) is not None:
        got.append(job.id)
    out.put(got)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_workers_never_claim_the_same_job(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = database_url(kind, tmp_path, request)
    db = Database(url)
    db.migrate()
    t0 = utcnow() - dt.timedelta(seconds=60)
    for n in range(60):
        receive(db, f"1.2.3.{n}", f"1.2.3.{n}.1", t0)
    ingest.release_series(db, {f"1.2.3.{n}": None for n in range(60)}, now=t0)
    assert len(queue.enqueue_settled(db, POLICY, ROUTE)) == 60
    results: multiprocessing.Queue[list[int]] = multiprocessing.get_context("spawn").Queue()
    workers = [multiprocessing.get_context("spawn").Process(target=_claim_all, args=(url, f"w{n}", results))
               for n in range(4)]
    for w in workers:
        w.start()
    claimed = [job for _ in workers for job in results.get(timeout=120)]
    for w in workers:
        w.join(timeout=30)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60


def test_outbox_retries_with_backoff_until_delivered(database: Database) -> None:
    job_id = settled_job(database)
    queue.claim(database, "w", POLICY, MODELS)
    queue.complete(database, job_id, "w", [queue.ResultFile("SEG", "1.2", "9.1", "9", "r/seg.dcm")], ["pacs"])
    policy = outbox.DeliveryPolicy(backoff_seconds=30)
    task = outbox.claim(database, "s", policy)
    assert task is not None and (task.destination, task.path, task.attempt) == ("pacs", "r/seg.dcm", 1)
    assert outbox.claim(database, "s", policy) is None
    when = outbox.failed(database, task.id, "PACS refused the association", policy)
    assert when > utcnow() + dt.timedelta(seconds=25)
    assert outbox.claim(database, "s", policy) is None
    with database.transaction() as session:
        session.get(Delivery, task.id).not_before = utcnow()
    again = outbox.claim(database, "s", policy)
    assert again is not None and again.attempt == 2
    outbox.delivered(database, again.id, 0)
    with database.transaction() as session:
        delivery = session.get(Delivery, again.id)
        assert (delivery.state, delivery.last_status, delivery.error) == ("delivered", 0, None)
