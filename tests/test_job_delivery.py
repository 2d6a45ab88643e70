"""The ``job_delivery`` view tells in SQL what ``jobs.state`` alone cannot: whether a succeeded job's results
have reached every destination, on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import text

from db import outbox, queue
from db.engine import Database
from test_queue import MODELS, POLICY, settled_job

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def progress(db: Database, job_id: int) -> tuple[str, int, int, int]:
    with db.read() as session:
        row = session.execute(text("SELECT progress, deliveries, delivered, waiting FROM job_delivery "
                                   "WHERE job_id = :job"), {"job": job_id}).one()
    return str(row[0]), int(row[1]), int(row[2] or 0), int(row[3] or 0)


def test_a_succeeded_job_is_delivering_until_every_destination_has_its_results(database: Database) -> None:
    job_id = settled_job(database)
    assert progress(database, job_id) == ("queued", 0, 0, 0)
    job = queue.claim(database, "w1", POLICY, MODELS)
    assert job is not None and job.id == job_id
    assert progress(database, job_id)[0] == "running"
    results = [queue.ResultFile("SEG", SEG, "9.1.1", "9.1", "r/1/seg.dcm"),
               queue.ResultFile("SR", SR, "9.1.2", "9.1", "r/1/sr.dcm")]
    assert queue.complete(database, job_id, "w1", results, ["pacs", "archive"])
    assert progress(database, job_id) == ("delivering", 4, 0, 4)
    policy = outbox.DeliveryPolicy()
    while (task := outbox.claim(database, "sender", policy)) is not None:
        if task.destination == "pacs":
            outbox.delivered(database, task.id, 0)
        else:
            outbox.failed(database, task.id, "archive down", policy)
    assert progress(database, job_id) == ("delivering", 4, 2, 2), "the archive is still waiting"
    with database.transaction() as session:
        session.execute(text("UPDATE deliveries SET not_before = created_at"))  # due again, not waiting backoff
    while (task := outbox.claim(database, "sender", policy)) is not None:
        outbox.delivered(database, task.id, 0)
    assert progress(database, job_id) == ("delivered", 4, 4, 0)


def test_a_job_without_destinations_stays_succeeded(database: Database) -> None:
    job_id = settled_job(database)
    assert queue.claim(database, "w1", POLICY, MODELS) is not None
    assert queue.complete(database, job_id, "w1", [queue.ResultFile("SR", SR, "9.2.1", "9.2", "r/2/sr.dcm")], [])
    assert progress(database, job_id) == ("succeeded", 0, 0, 0)
