"""Retention on a real database and real files: a series done and delivered loses its files after
keep_days, one with a failed job after keep_failed_days, one with a job running or a delivery waiting
never; the rows stay, marked purged; a purged instance sent again is stored again, and a purged series that
receives again is retained anew; a purged job cannot be retried (the API, ``ainode retry`` and the status
page say why); ``ainode purge --dry-run`` and ``ainode purge`` on the command line; every purge is audited."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from ainode.status import StatusServer
from db import ingest, outbox, queue, retention
from db.engine import Database
from db.errors import RejectedInput
from db.models import AuditEvent, Instance, Job, Result, Series, utcnow
from db.storage import instance_path, result_path, write_atomic
from test_queue import MODELS, POLICY, ROUTE
from test_status import retry as retry_from_the_page

POLICY_KEEP = retention.RetentionPolicy(keep_days=7, keep_failed_days=30)


def received(db: Database, root: Path, series: str, n: int = 2, first: int = 0) -> list[Path]:
    """``n`` instances of ``series`` (numbered from ``first``) on disk and recorded, the series settled into
    a job."""
    t0 = utcnow() - dt.timedelta(minutes=5)
    paths = []
    for k in range(first, first + n):
        relative = instance_path("1.2.3", series, f"{series}.{k}")
        write_atomic(root / relative, b"x" * 1000)
        ingest.record_instance(db, ingest.ReceivedInstance(
            "1.2.3", series, f"{series}.{k}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT", str(relative),
            1000, "STORESCU"), now=t0)
        paths.append(root / relative)
    ingest.release_series(db, {series: None}, now=t0)
    queue.enqueue_settled(db, POLICY, ROUTE)
    return paths


def processed(db: Database, root: Path, succeed: bool, deliver: bool = True) -> Path | None:
    job = queue.claim(db, "w", POLICY, MODELS)
    assert job is not None
    if not succeed:
        queue.fail(db, job.id, "w", "missing slice", POLICY, retry=False)
        return None
    relative = result_path("1.2.3", job.id, "SEG", f"9.{job.id}")
    write_atomic(root / relative, b"s" * 500)
    queue.complete(db, job.id, "w", [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", f"9.{job.id}", "9.9",
                                                      str(relative))], ["pacs"])
    if not deliver:
        return root / relative
    task = outbox.claim(db, "sender", outbox.DeliveryPolicy())
    assert task is not None
    outbox.delivered(db, task.id, 0)
    return root / relative


def test_what_is_done_goes_after_keep_days_and_what_failed_after_keep_failed_days(
        tmp_path: Path, database: Database) -> None:
    done_files = received(database, tmp_path, "1.2.3.1")
    done_files.append(processed(database, tmp_path, succeed=True))  # type: ignore[arg-type]
    failed_files = received(database, tmp_path, "1.2.3.2")
    processed(database, tmp_path, succeed=False)
    running_files = received(database, tmp_path, "1.2.3.3")
    assert queue.claim(database, "w", POLICY, MODELS) is not None  # a job of it is running

    assert retention.purgeable(database, tmp_path, POLICY_KEEP) == [], "nothing is old enough yet"
    in_8_days = utcnow() + dt.timedelta(days=8)
    (candidate,) = retention.purgeable(database, tmp_path, POLICY_KEEP, now=in_8_days)
    assert candidate.series_instance_uid == "1.2.3.1" and candidate.size_bytes == 2500
    assert all(p.exists() for p in done_files), "a dry run deletes nothing"
    (purged,) = retention.purge(database, tmp_path, POLICY_KEEP, "test", now=in_8_days)
    assert purged.size_bytes == 2500 and not any(p.exists() for p in done_files)
    assert all(p.exists() for p in failed_files + running_files)

    in_31_days = utcnow() + dt.timedelta(days=31)
    assert [p.series_instance_uid for p in retention.purge(database, tmp_path, POLICY_KEEP, "test",
                                                           now=in_31_days)] == ["1.2.3.2"]
    assert all(p.exists() for p in running_files), "never while a job runs"
    with database.read() as session:
        purged_series = {s.series_instance_uid
                         for s in session.scalars(select(Series).where(Series.purged_at.is_not(None)))}
        assert purged_series == {"1.2.3.1", "1.2.3.2"}, "the rows stay, marked purged"
        assert session.scalar(select(Result.purged_at)) is not None
        audited = [(e.kind, e.subject) for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "purge"))]
        assert audited == [("purge", "1.2.3.1"), ("purge", "1.2.3.2")]


def test_a_purged_instance_sent_again_is_stored_again(tmp_path: Path, database: Database) -> None:
    received(database, tmp_path, "1.2.3.1", n=1)
    processed(database, tmp_path, succeed=True)
    retention.purge(database, tmp_path, POLICY_KEEP, "test", now=utcnow() + dt.timedelta(days=8))
    assert not ingest.is_stored(database, "1.2.3.1.0"), "a purged instance is no longer stored"
    relative = instance_path("1.2.3", "1.2.3.1", "1.2.3.1.0")
    write_atomic(tmp_path / relative, b"y" * 1200)
    assert ingest.record_instance(database, ingest.ReceivedInstance(
        "1.2.3", "1.2.3.1", "1.2.3.1.0", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "CT", str(relative),
        1200, "STORESCU"))
    assert ingest.is_stored(database, "1.2.3.1.0")
    with database.read() as session:
        instance = session.scalar(select(Instance))
        series = session.scalar(select(Series))
        assert (instance.size_bytes, instance.purged_at, series.state, series.purged_at) == (1200, None, "receiving",
                                                                                             None)


def test_results_still_to_be_delivered_are_never_purged(tmp_path: Path, database: Database) -> None:
    files = received(database, tmp_path, "1.2.3.1")
    files.append(processed(database, tmp_path, succeed=True, deliver=False))  # type: ignore[arg-type]
    in_a_year = utcnow() + dt.timedelta(days=365)
    assert retention.purge(database, tmp_path, POLICY_KEEP, "test", now=in_a_year) == [], "a delivery pending"
    at_once = outbox.DeliveryPolicy(backoff_seconds=0)
    task = outbox.claim(database, "sender", at_once)
    assert task is not None
    assert retention.purge(database, tmp_path, POLICY_KEEP, "test", now=in_a_year) == [], "a delivery sending"
    outbox.failed(database, task.id, "association rejected", at_once)
    assert retention.purgeable(database, tmp_path, POLICY_KEEP, now=in_a_year) == [], "failed, so pending again"
    assert all(p.exists() for p in files)
    task = outbox.claim(database, "sender", at_once)
    assert task is not None and task.path == str(files[-1].relative_to(tmp_path)), "its file is still there to send"
    outbox.delivered(database, task.id, 0)
    (purged,) = retention.purge(database, tmp_path, POLICY_KEEP, "test", now=utcnow() + dt.timedelta(days=8))
    assert purged.size_bytes == 2500 and not any(p.exists() for p in files), "delivered: then it goes"


def test_a_purged_job_is_not_retried_and_the_operator_is_told_why(tmp_path: Path, database: Database) -> None:
    received(database, tmp_path, "1.2.3.1")
    processed(database, tmp_path, succeed=False)
    assert retention.purge(database, tmp_path, POLICY_KEEP, "test", now=utcnow() + dt.timedelta(days=31))
    with database.read() as session:
        job_id = session.scalar(select(Job.id))
    assert job_id is not None
    with pytest.raises(RejectedInput, match="retention deleted the files of series 1.2.3.1 on .*send the series "
                                            "again"):
        queue.retry(database, job_id)
    page = StatusServer(database, "127.0.0.1", 0, storage_root=tmp_path).start()
    try:
        status, _, body = retry_from_the_page(page, job_id)
    finally:
        page.stop()
    assert status == 409 and "retention deleted the files of series 1.2.3.1" in body, (status, body)
    with database.read() as session:
        assert session.scalar(select(Job.state)) == "rejected", "still as it ended"


def test_a_purged_series_that_receives_a_new_instance_is_retained_again(tmp_path: Path, database: Database) -> None:
    received(database, tmp_path, "1.2.3.1")
    processed(database, tmp_path, succeed=True)
    assert retention.purge(database, tmp_path, POLICY_KEEP, "test", now=utcnow() + dt.timedelta(days=8))
    (new,) = received(database, tmp_path, "1.2.3.1", n=1, first=2)  # an instance it never had
    with database.read() as session:
        assert session.scalar(select(Series.purged_at)) is None, "files again: retention must see the series"
    result = processed(database, tmp_path, succeed=True)
    (purged,) = retention.purge(database, tmp_path, POLICY_KEEP, "test", now=utcnow() + dt.timedelta(days=8))
    assert set(purged.files) == {str(new.relative_to(tmp_path)), str(result.relative_to(tmp_path))}  # type: ignore[union-attr]
    assert not new.exists() and not result.exists()  # type: ignore[union-attr]


def ainode(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line as an operator runs it: its own process, its own view of the database."""
    return subprocess.run([sys.executable, "-m", "ainode.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_ainode_purge_dry_run_lists_what_would_go_and_purge_deletes_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    db = Database(f"sqlite:///{root / 'ainode.db'}")
    db.migrate()
    done = received(db, root, "1.2.3.1")
    done.append(processed(db, root, succeed=True))  # type: ignore[arg-type]
    for path in done:
        path.write_bytes(b"z" * 200_000)  # 0.6 MB in all
    kept = received(db, root, "1.2.3.2")
    processed(db, root, succeed=False)
    config = tmp_path / "ainode.toml"
    config.write_text(f'[storage]\nroot = "{root}"\n[retention]\nkeep_days = 0\nkeep_failed_days = 1000\n')

    dry = ainode("purge", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "1.2.3.1: 3 files, 0.6 MB; done and delivered" in dry.stdout, dry.stdout
    assert "would free 0.6 MB in 1 series" in dry.stdout and "1.2.3.2" not in dry.stdout, dry.stdout
    assert all(p.exists() for p in done + kept), "a dry run deletes nothing"
    with db.read() as session:
        assert session.scalars(select(Series.purged_at)).all() == [None, None], "nor marks anything"
        assert session.scalar(select(AuditEvent).where(AuditEvent.kind == "purge")) is None

    real = ainode("purge", "--config", str(config))
    assert real.returncode == 0, real.stderr
    assert "1.2.3.1: 3 files, 0.6 MB; done and delivered" in real.stdout and "freed 0.6 MB in 1 series" in \
        real.stdout, real.stdout
    assert not any(p.exists() for p in done) and all(p.exists() for p in kept)
    with db.read() as session:
        assert session.scalar(select(Series.purged_at).where(Series.series_instance_uid == "1.2.3.1")) is not None
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.kind == "purge"))
        assert event.subject == "1.2.3.1" and event.actor.startswith("operator:"), (event.subject, event.actor)
        job_id = session.scalar(select(Job.id).where(Job.state == "succeeded"))
    assert "would free 0.0 MB in 0 series" in ainode("purge", "--dry-run", "--config", str(config)).stdout

    again = ainode("retry", str(job_id), "--config", str(config))
    assert again.returncode == 2 and "retention deleted the files of series 1.2.3.1" in again.stderr, again
    db.dispose()
