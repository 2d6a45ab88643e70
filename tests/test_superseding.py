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
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=2),
                          started_at=t0 + dt.timedelta(seconds=0.5))
    assert len(queue.enqueue_settled(database, POLICY, ROUTE)) == 1
    with database.read() as session:
        assert session.scalar(select(Series.incomplete_reason)) is None


def test_a_clean_association_alongside_one_that_went_wrong_keeps_the_series_marked(database: Database) -> None:
    """Two senders at once: one aborts, the other ends normally afterwards. The clean one cannot vouch for
    what the aborted one left out, so the series still waits for a retry; the retry clears the mark."""
    t0 = utcnow() - dt.timedelta(seconds=60)
    clean_start = t0 - dt.timedelta(seconds=5)  # started before the bad one ended
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: "the association ended without a release"}, now=t0)
    receive(database, SERIES, SERIES + ".2", t0 + dt.timedelta(seconds=1))
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=2), started_at=clean_start)
    assert queue.enqueue_settled(database, POLICY, ROUTE) == [], "still possibly partial"
    with database.read() as session:
        assert session.scalar(select(Series.incomplete_reason)) == "the association ended without a release"
    ingest.release_series(database, {SERIES: None}, now=t0 + dt.timedelta(seconds=3))  # when it started: unknown
    assert queue.enqueue_settled(database, POLICY, ROUTE) == [], "an end that cannot say when it started clears nothing"

    retry = t0 + dt.timedelta(seconds=10)
    receive(database, SERIES, SERIES + ".1", retry)  # the sender's retry, after both ended
    ingest.release_series(database, {SERIES: None}, now=retry, started_at=retry - dt.timedelta(seconds=1))
    assert len(queue.enqueue_settled(database, POLICY, ROUTE)) == 1


def _processed(db: Database, worker: str, delivered_to: tuple[str, ...], failed_to: tuple[str, ...] = (),
               untried_to: tuple[str, ...] = ()) -> int:
    """Claim and complete the next job with a SEG and an SR; its deliveries delivered, failed once, or not
    tried yet (their next try is not due)."""
    job = queue.claim(db, worker, POLICY, MODELS)
    assert job is not None
    n = job.id
    results = [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", f"9.{n}.1", f"9.{n}", f"r/{n}/seg.dcm"),
               queue.ResultFile("SR", "1.2.840.10008.5.1.4.1.1.88.34", f"9.{n}.2", f"9.{n}", f"r/{n}/sr.dcm")]
    assert queue.complete(db, job.id, worker, results, [*delivered_to, *failed_to, *untried_to])
    with db.transaction() as session:
        for delivery in session.scalars(select(Delivery).where(Delivery.destination.in_(untried_to))):
            delivery.not_before = utcnow() + dt.timedelta(hours=1)
    policy = outbox.DeliveryPolicy()
    while (task := outbox.claim(db, "sender", policy)) is not None:
        if task.destination in delivered_to:
            outbox.delivered(db, task.id, 0)
        else:
            outbox.failed(db, task.id, "peer down", policy)
    return job.id


def _settles(db: Database, t0: dt.datetime, sop: str) -> int:
    """An instance of the series arrives and the series settles: a job, which supersedes the previous one
    when there is one."""
    receive(db, SERIES, sop, t0)
    ingest.release_series(db, {SERIES: None}, now=t0)
    (newer,) = queue.enqueue_settled(db, POLICY, ROUTE)
    return newer


def _states(db: Database) -> dict[tuple[str, int, str], str]:
    with db.read() as session:
        return {(r.kind, r.job_id, d.destination): d.state for r in session.scalars(select(Result))
                for d in r.deliveries}


def test_a_series_that_grows_supersedes_its_job_and_retracts_where_it_was_delivered(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    first = _processed(database, "w", delivered_to=("pacs",), untried_to=("archive",))

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
    _settles(database, t0, SERIES + ".1")
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


KO_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def test_what_reaches_a_destination_while_the_newer_job_runs_is_retracted_and_nothing_else_is_sent(
        database: Database) -> None:
    """The deliveries of the replaced job are settled when the newer one is claimed: not sent since then,
    and every one that had been started (delivered, in flight, or failed after a send that the PACS may have
    stored) is retracted, whatever its answer is while the newer job runs."""
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    job = queue.claim(database, "w", POLICY, MODELS)
    assert job is not None
    first = job.id
    results = [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", "9", "r/seg.dcm"),
               queue.ResultFile("SR", "1.2.840.10008.5.1.4.1.1.88.34", "9.2", "9", "r/sr.dcm")]
    assert queue.complete(database, first, "w", results, ["pacs", "slow", "flaky", "timeout", "late"])
    with database.transaction() as session:  # not due yet: never tried
        for delivery in session.scalars(select(Delivery).where(Delivery.destination == "late")):
            delivery.not_before = utcnow() + dt.timedelta(hours=1)
    policy = outbox.DeliveryPolicy()
    in_flight: dict[tuple[str, str], int] = {}
    while (task := outbox.claim(database, "sender", policy)) is not None:
        if task.destination == "pacs":
            outbox.delivered(database, task.id, 0)
        elif task.destination == "timeout":
            outbox.failed(database, task.id, "no answer within 30 s", policy)  # it may have been stored
        else:
            in_flight[(task.destination, task.sop_instance_uid)] = task.id  # slow, flaky: being sent
    assert len(in_flight) == 4

    second = _settles(database, t0 + dt.timedelta(seconds=1), SERIES + ".2")
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == second
    assert sorted(r.sop_instance_uid for r in claimed.superseded) == ["9.1", "9.2"]
    states = _states(database)
    assert {d: s for (_, job_id, d), s in states.items() if job_id == first} == {
        "pacs": "delivered", "slow": "withdrawn", "flaky": "withdrawn", "timeout": "withdrawn", "late": "withdrawn"}

    # while the newer job runs: the senders answer, and nothing of the replaced job is sent any more
    for (destination, _), delivery_id in in_flight.items():
        if destination == "slow":
            outbox.delivered(database, delivery_id, 0)
        else:
            outbox.failed(database, delivery_id, "association aborted", policy)
    assert outbox.claim(database, "sender", policy) is None, "a superseded result is never sent again"

    note = queue.ResultFile(queue.REJECTION_NOTE, KO_CLASS, "9.ko", "9.k", "r/ko.dcm")
    assert queue.complete(database, second, "w", [note], ["pacs"])
    states = _states(database)
    assert {d for (kind, job_id, d) in states if kind == "KO"} == {"pacs", "slow", "flaky", "timeout"}, \
        "wherever a send of them was started; not where none was"
    assert states[("SEG", first, "slow")] == "delivered", "the answer of the send in flight is recorded"
    assert states[("SEG", first, "flaky")] == states[("SEG", first, "late")] == "withdrawn"
    with database.read() as session:
        errors = {d.destination: d.error for d in session.scalars(select(Delivery)) if d.result.job_id == first}
    assert "retracted by its rejection note" in str(errors["flaky"]) and "association aborted" in str(errors["flaky"])
    assert errors["late"] == "superseded by a newer result before it was sent"


def test_nothing_sent_yet_is_withdrawn_and_nothing_is_retracted(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    first = _processed(database, "w", delivered_to=(), untried_to=("pacs",))
    _settles(database, t0 + dt.timedelta(seconds=1), SERIES + ".2")
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.superseded == ()
    assert set(_states(database).values()) == {"withdrawn"}
    assert queue.complete(database, claimed.id, "w", [], ["pacs"])
    assert f"supersedes job {first} (retracted at no destination)" in events(database, claimed.id)[-1][1]


def test_the_rejection_note_of_the_replaced_job_is_still_delivered(database: Database) -> None:
    """A job that itself superseded another: its note retracts the oldest results, which the newest note
    does not name, so it is not withdrawn."""
    t0 = utcnow() - dt.timedelta(seconds=60)
    receive(database, SERIES, SERIES + ".1", t0)
    ingest.release_series(database, {SERIES: None}, now=t0)
    queue.enqueue_settled(database, POLICY, ROUTE)
    _processed(database, "w", delivered_to=("pacs",))
    _settles(database, t0 + dt.timedelta(seconds=1), SERIES + ".2")
    middle = queue.claim(database, "w", POLICY, MODELS)
    assert middle is not None and len(middle.superseded) == 2
    seg = queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.m", "9.n", "r/m.dcm")
    note = queue.ResultFile(queue.REJECTION_NOTE, KO_CLASS, "9.ko", "9.k", "r/ko.dcm")
    assert queue.complete(database, middle.id, "w", [seg, note], ["pacs"])  # nothing of it sent yet
    _settles(database, t0 + dt.timedelta(seconds=2), SERIES + ".3")
    newest = queue.claim(database, "w", POLICY, MODELS)
    assert newest is not None and newest.superseded == (), "nothing of the middle job reached a destination"
    states = _states(database)
    assert (states[("SEG", middle.id, "pacs")], states[("KO", middle.id, "pacs")]) == ("withdrawn", "pending")


def test_a_superseding_job_waits_while_the_job_it_replaces_is_queued_for_a_retry(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    _settles(database, t0, SERIES + ".1")
    running = queue.claim(database, "w1", POLICY, MODELS)
    assert running is not None
    newer = _settles(database, t0 + dt.timedelta(seconds=1), SERIES + ".2")
    assert queue.fail(database, running.id, "w1", "out of memory", POLICY) == "queued"
    assert queue.claim(database, "w2", POLICY, MODELS) is None, "the replaced job may still make results"
    with database.transaction() as session:  # its retry is due
        session.get(Job, running.id).not_before = utcnow()
    again = queue.claim(database, "w1", POLICY, MODELS)
    assert again is not None and again.id == running.id
    assert queue.complete(database, running.id, "w1", [], ["pacs"])
    claimed = queue.claim(database, "w2", POLICY, MODELS)
    assert claimed is not None and claimed.id == newer
