"""Several workers on one PostgreSQL database, as on several machines: ``ainode serve`` receives and
settles, two ``ainode worker`` processes share the queue. Every series is processed exactly once, both
workers take part, and every result is delivered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from conftest import NodeProcess, PostgreSQL, StoreSCP, phantom_series, storescu, wait_for
from db import monitor
from worker.assembly.series import assemble

pytestmark = pytest.mark.slow


def jobs(node: NodeProcess) -> list[monitor.JobRow]:
    db = node.database()
    try:
        return monitor.jobs(db)
    finally:
        db.dispose()


def claimers(node: NodeProcess, job_id: int) -> list[str]:
    db = node.database()
    try:
        detail = monitor.job(db, job_id)
        assert detail is not None
        return [event.worker for event in detail.events if event.kind == "claimed"]
    finally:
        db.dispose()


def test_two_workers_share_the_queue_on_postgresql(tmp_path: Path, postgresql: PostgreSQL, pacs: StoreSCP,
                                                   node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(pacs.port, workers=0, database_url=postgresql.new_database()).serve()
    workers = [node.worker(), node.worker()]
    wait_for(lambda: node.log_text().count(" ready (") >= 2, 120, lambda: f"workers did not start: {node.log_text()}")
    studies = [phantom_series(tmp_path / f"series{n}", seed=80 + n, matrix=128, slice_thickness=4.0)
               for n in range(4)]
    for series in studies:
        assemble(series.paths)  # a valid volume, so each job must succeed
        sent = storescu(node.port, series.paths)
        assert sent.returncode == 0, sent.stderr

    def finished() -> bool:
        rows = jobs(node)
        return len(rows) == len(studies) and all(row.state in ("succeeded", "failed", "rejected") for row in rows)

    wait_for(finished, 300, lambda: f"jobs: {jobs(node)}\n{node.log_text()}")
    rows = jobs(node)
    assert sorted(row.series_instance_uid for row in rows) == sorted(s.identity.series_instance_uid for s in studies)
    assert all(row.state == "succeeded" and row.attempts == 1 for row in rows), rows
    owners = {claimer for row in rows for claimer in claimers(node, row.id)}
    assert all(len(claimers(node, row.id)) == 1 for row in rows)
    assert {owner.rsplit(":", 1)[1] for owner in owners} == {str(w.pid) for w in workers}, owners

    expected = {(s.identity.study_instance_uid, kind) for s in studies for kind in ("SEG", "SR")}
    wait_for(lambda: returned(pacs) >= expected, 120,
             lambda: f"results arrived: {sorted(returned(pacs))}; jobs: {jobs(node)}\n{node.log_text()}")


def returned(pacs: StoreSCP) -> set[tuple[str, str]]:
    """(study, modality) of every complete file the PACS has received."""
    found = set()
    for path in pacs.files():
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # storescp is still writing it
            continue
        found.add((str(ds.StudyInstanceUID), str(ds.Modality)))
    return found
