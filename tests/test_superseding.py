"""A series whose transfer may be partial waits for the sender's retry; a series that grows after its
results were made is processed again and the earlier results are retracted (IHE IOCM), on a real
database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db import ingest, monitor, outbox, queue
from db.engine import Database
from db.models import Delivery, Job, JobEvent, Result, Series, utcnow
from test_queue import MODELS, POLICY, ROUTE, receive

SERIES = "1.2.3.4"


def events(db: Database, job_id: int) -> list[tuple[str, str]]:
    with db.read() as session:
        return [(e.kind, e.message) for e in
                session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


def test_a_transfer_that_ended_badly_waits_the_longer_settle_time(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: "the association ended without a release"}, now=t0)
    assert queue.enqueue_settled(database, POLICY, ROUTE) == [], "settle_seconds is not enough after an abort"
    later = t0 + dt.timedelta(seconds=POLICY.incomplete_settle_seconds)
    (job_id,) = queue.enqueue_settled(database, POLICY, ROUTE, now=later)
    assert "after an incomplete transfer (the association ended without a release)" in events(database, job_id)[0][1]


def test_a_retry_that_ends_normally_settles_at_the_normal_time(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: "an instance was answered 0xA700: storage error"}, now=t0)
    receive(database, SERIES, SERIES + ".2", t0 + dt.timedelta(seconds=1))  # the sender's retry
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=2))
    assert len(queue.enqueue_settled(database, POLICY, ROUTE)) == 1
    with database.read() as session:
        assert session.scalar(select(Series.incomplete_reason)) is None


def _processed(db: Database, worker: str, delivered_to: list[str], pending_to: list[str]) -> int:
    """Claim and complete the next job with a SEG and an SR; some deliveries done, some still pending."""
    job = queue.claim(db, worker, POLICY, MODELS)
    assert job is not None
    n = job.id
    results = [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", f"9.{n}.1", f"9.{n}", f"r/{n}/seg.dcm"),
               queue.ResultFile("SR", "1.2.840.10008.5.1.4.1.1.88.34", f"9.{n}.2", f"9.{n}", f"r/{n}/sr.dcm")]
    assert queue.complete(db, job.id, worker, results, delivered_to + pending_to)
    policy = outbox.DeliveryPolicy()
    while (task := outbox.claim(db, "sender", policy)) is not None:
        if task.destination in delivered_to:
            outbox.delivered(db, task.id, 0)
        else:
            outbox.failed(db, task.id, "peer down", policy)
    return job.id


def test_a_series_that_grows_supersedes_its_job_and_retracts_where_it_was_delivered(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    first = _processed(database, "w", delivered_to=["pacs"], pending_to=["archive"])

    receive(database, SERIES, SERIES + ".2", t0 + dt.timedelta(seconds=1))  # the rest arrives later
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=1))
    (second,) = queue.enqueue_settled(database, POLICY, ROUTE)
    assert f"supersedes job {first}" in events(database, second)[0][1]
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == second
    assert sorted(r.kind for r in claimed.superseded) == ["SEG", "SR"], "what reached a destination is retracted"
    note = queue.ResultFile(queue.REJECTION_NOTE, "1.2.840.10008.5.1.4.1.1.88.59", "9.ko", "9.k", "r/ko.dcm")
    new = queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.new", "9.n", "r/new.dcm")
    assert queue.complete(database, second, "w", [new, note], ["pacs", "archive"])
    with database.read() as session:
        assert session.get(Job, second).supersedes_job_id == first
        deliveries = {(r.kind, r.job_id, d.destination): d.state for r in session.scalars(select(Result))
                      for d in r.deliveries}
    assert deliveries == {
        ("SEG", first, "pacs"): "delivered", ("SR", first, "pacs"): "delivered",
        ("SEG", first, "archive"): "withdrawn", ("SR", first, "archive"): "withdrawn",  # never sent now
        ("SEG", second, "pacs"): "pending", ("SEG", second, "archive"): "pending",
        ("KO", second, "pacs"): "pending",  # only where the superseded results are
    }
    assert f"supersedes job {first} (retracted at pacs)" in events(database, second)[-1][1]
    rows = {row.id: row for row in monitor.jobs(database)}
    assert (rows[first].delivered, rows[second].delivered) == ("2/2", "0/3 waiting"), "withdrawn ones do not count"
    assert rows[second].supersedes == first


def test_a_queued_job_of_a_series_that_grows_again_is_superseded_before_it_runs(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    (waiting,) = queue.enqueue_settled(database, POLICY, ROUTE)
    receive(database, SERIES, SERIES + ".2", t0 + dt.timedelta(seconds=1))
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=1))
    (newer,) = queue.enqueue_settled(database, POLICY, ROUTE)
    with database.read() as session:
        assert session.get(Job, waiting).state == "superseded"
        assert session.get(Job, newer).supersedes_job_id is None, "nothing of the series was processed yet"
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == newer and claimed.superseded == ()


def test_a_superseding_job_waits_until_the_job_it_replaces_has_finished(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    running = queue.claim(database, "w1", POLICY, MODELS)
    assert running is not None
    receive(database, SERIES, SERIES + ".2", t0 + dt.timedelta(seconds=1))
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=1))
    (newer,) = queue.enqueue_settled(database, POLICY, ROUTE)
    assert queue.claim(database, "w2", POLICY, MODELS) is None, "its results are not known yet"
    assert queue.complete(database, running.id, "w1", [], ["pacs"])
    claimed = queue.claim(database, "w2", POLICY, MODELS)
    assert claimed is not None and claimed.id == newer
    with database.read() as session:
        assert session.scalar(select(Delivery)) is None
