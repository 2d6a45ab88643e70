"""The status page over a real database (SQLite and PostgreSQL) and a real HTTP client: the job table,
a job's page, JSON, the health check, HTML escaping of what came from outside, and a 503 when the
database cannot be read."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from ainode.status import StatusServer
from db import queue
from db.engine import Database
from test_queue import MODELS, POLICY, settled_job


@pytest.fixture()
def page(database: Database) -> Iterator[StatusServer]:
    server = StatusServer(database, "127.0.0.1", 0).start()
    yield server
    server.stop()


def get(server: StatusServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_jobs_and_a_job_as_html_and_json(page: StatusServer, database: Database) -> None:
    done = settled_job(database, "1.2.3.4")
    rejected = settled_job(database, "1.2.3.5")
    queue.claim(database, "w", POLICY, MODELS)
    queue.complete(database, done, "w", [queue.ResultFile("SEG", "1.2", "9.1", "9", "r/seg.dcm")], ["pacs"])
    queue.claim(database, "w", POLICY, MODELS)
    queue.fail(database, rejected, "w", "instance 1.2.3.5.1 has no <PixelSpacing>", POLICY, retry=False)

    status, kind, body = get(page, "/")
    assert status == 200 and kind.startswith("text/html")
    assert f'<a href="/jobs/{done}">{done}</a>' in body and '<span class="succeeded">succeeded</span>' in body
    assert "has no &lt;PixelSpacing&gt;" in body and "<PixelSpacing>" not in body  # escaped
    status, _, body = get(page, "/?state=rejected")
    assert "1.2.3.5" in body and "1.2.3.4<" not in body

    rows = json.loads(get(page, "/api/jobs")[2])
    assert {(row["id"], row["state"]) for row in rows} == {(done, "succeeded"), (rejected, "rejected")}
    assert rows[0]["created_at"].endswith("Z")

    status, _, body = get(page, f"/jobs/{done}")
    assert status == 200 and "r/seg.dcm" in body and "pacs" in body and "claimed" in body
    detail = json.loads(get(page, f"/api/jobs/{done}")[2])
    assert detail["row"]["state"] == "succeeded"
    deliveries = [(d["kind"], d["destination"], d["state"]) for d in detail["deliveries"]]
    assert deliveries == [("SEG", "pacs", "pending")]


def test_unknown_job_and_path_are_404_and_health_is_ok(page: StatusServer) -> None:
    assert get(page, "/jobs/999")[0] == 404
    assert get(page, "/api/jobs/999")[0] == 404
    assert get(page, "/nothing")[0] == 404
    assert get(page, "/healthz")[:3:2] == (200, "ok\n")


def test_an_unreadable_database_is_a_503_not_a_crash(page: StatusServer, database: Database) -> None:
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE job_events")
    assert get(page, "/")[0] == 503
    assert get(page, "/healthz")[0] == 503
