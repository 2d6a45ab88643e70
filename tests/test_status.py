"""The status page over a real database (SQLite and PostgreSQL) and a real HTTP client: the overview,
a job's page, JSON, the health check, the retry form (token and same-origin check), authentication,
HTML escaping of everything a peer sent, Prometheus metrics parsed with prometheus_client's own parser,
and answers when the database cannot be read (503 for the page, 200 with ainode_database_up 0 for
/metrics)."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import select

from ainode import exporter
from ainode.access import Access
from ainode.config import load_settings
from ainode.kit import wait_for
from ainode.status import StatusServer
from conftest import PostgreSQL, free_port
from db import ingest, monitor, overview, queue
from db.engine import Database
from db.errors import ConfigurationError
from db.models import JobEvent, utcnow
from test_queue import MODELS, POLICY, ROUTE, settled_job

HOSTILE = {
    "patient_id": '"><img src=x onerror=alert(1)>',
    "patient_name": "<script>alert('name')</script>",
    "series_description": "</td><iframe src=//evil.example>",
    "calling_ae_title": "<svg onload=x>",
    "error": "bad <object data=//evil.example>input</object>",
}
RAW_TAGS = re.compile(r"<(img|script|iframe|svg|object)[\s>]", re.IGNORECASE)


@pytest.fixture()
def page(database: Database, tmp_path: Path) -> Iterator[StatusServer]:
    server = StatusServer(database, "127.0.0.1", 0, storage_root=tmp_path).start()
    yield server
    server.stop()


def request(server: StatusServer, path: str, method: str = "GET", body: str | None = None,
            **headers: str) -> tuple[int, dict[str, str], str]:
    """One request with exactly the headers given (plus Host), as a browser or an attacker would send it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def get(server: StatusServer, path: str, **headers: str) -> tuple[int, str, str]:
    status, found, body = request(server, path, **headers)
    return status, found.get("Content-Type", ""), body


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def metrics(server: StatusServer, **headers: str) -> dict[str, list[Sample]]:
    status, _, body = get(server, "/metrics", **headers)
    assert status == 200, body
    return {family.name: family.samples for family in text_string_to_metric_families(body)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def finish_two_jobs(db: Database) -> tuple[int, int]:
    """A succeeded job with stage times and a pending delivery, and a rejected one."""
    done, rejected = settled_job(db, "1.2.3.4"), settled_job(db, "1.2.3.5")
    queue.claim(db, "w", POLICY, MODELS)
    for stage, seconds in (("assemble", 0.2), ("segment", 3.0), ("encode", 0.7)):
        queue.record_stage(db, done, "w", stage, seconds)
    queue.complete(db, done, "w", [queue.ResultFile("SEG", "1.2", "9.1", "9", "r/seg.dcm")], ["pacs"])
    queue.claim(db, "w", POLICY, MODELS)
    queue.record_stage(db, rejected, "w", "assemble", 0.4)
    queue.fail(db, rejected, "w", "instance 1.2.3.5.1 has no <PixelSpacing>", POLICY, retry=False)
    return done, rejected


def test_jobs_and_a_job_as_html_and_json(page: StatusServer, database: Database) -> None:
    done, rejected = finish_two_jobs(database)

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
    assert status == 200 and "r/seg.dcm" in body and "pacs" in body and "claimed" in body and "STORESCU" in body
    detail = json.loads(get(page, f"/api/jobs/{done}")[2])
    assert detail["row"]["state"] == "succeeded"
    deliveries = [(d["kind"], d["destination"], d["state"]) for d in detail["deliveries"]]
    assert deliveries == [("SEG", "pacs", "pending")]


def test_the_overview_shows_queue_states_stage_times_failures_and_waiting_deliveries(
        page: StatusServer, database: Database) -> None:
    done, rejected = finish_two_jobs(database)
    queued = settled_job(database, "1.2.3.6")
    body = get(page, "/")[2]
    assert re.search(r'id="summary-queued">queued<b>1</b>1 due now', body), body
    # jobs per state: last hour, last day, all
    assert re.search(r'<span class="rejected">rejected</span></td><td class="n">1</td><td class="n">1</td>'
                     r'<td class="n">1</td>', body)
    # stage times over the last day: assemble ran twice (0.2 s and 0.4 s)
    assert '<td>assemble</td><td class="n">2</td><td class="n">0.30 s</td><td class="n">0.39 s</td>' in body
    assert '<td>segment</td><td class="n">1</td><td class="n">3.00 s</td>' in body
    failed = body.split('id="failed"')[1].split("<h2>")[0]
    assert f'action="/jobs/{rejected}/retry"' in failed and "has no &lt;PixelSpacing&gt;" in failed
    assert f"/jobs/{done}/retry" not in failed and f"/jobs/{queued}/retry" not in failed
    waiting = body.split("Deliveries waiting</h2>")[1].split("<h2>")[0]
    assert f'<a href="/jobs/{done}">{done}</a>' in waiting and "<td>pacs</td>" in waiting
    assert 'id="summary-deliveries-waiting">deliveries waiting<b>1</b>' in body


def test_everything_a_peer_sent_is_escaped(page: StatusServer, database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    ingest.record_instance(database, ingest.ReceivedInstance(
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.7", sop_instance_uid="1.2.3.7.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
        path="incoming/x.dcm", size_bytes=10, calling_ae_title=HOSTILE["calling_ae_title"],
        patient_id=HOSTILE["patient_id"], patient_name=HOSTILE["patient_name"],
        series_description=HOSTILE["series_description"]), now=t0)
    ingest.release_series(database, {"1.2.3.7": None}, now=t0)
    (job,) = queue.enqueue_settled(database, POLICY, ROUTE)
    queue.claim(database, "w", POLICY, MODELS)
    queue.fail(database, job, "w", HOSTILE["error"], POLICY, retry=False)
    for path in ("/", f"/jobs/{job}"):
        body = get(page, path)[2]
        assert RAW_TAGS.findall(body) == [], path
        for key, text in HOSTILE.items():
            if key != "calling_ae_title" or path != "/":
                assert text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in \
                    body.replace("&quot;", '"').replace("&#x27;", "'"), (path, key)
    assert "default-src 'none'" in request(page, "/")[1]["Content-Security-Policy"]


def retry(server: StatusServer, job: int, token: str | None = None, **headers: str) -> tuple[int, dict[str, str], str]:
    host = f"127.0.0.1:{server.server_port}"
    fields = {"Origin": f"http://{host}", "Content_Type": "application/x-www-form-urlencoded", **headers}
    body = f"csrf={token if token is not None else server.access.csrf_token}"
    return request(server, f"/jobs/{job}/retry", "POST", body, **{k: v for k, v in fields.items() if v})


def test_the_retry_button_requeues_a_failed_job_only_with_the_token_from_this_page(
        page: StatusServer, database: Database) -> None:
    done, rejected = finish_two_jobs(database)
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', get(page, "/")[2]).group(1)  # type: ignore[union-attr]
    assert retry(page, rejected, token="")[0] == 403
    assert retry(page, rejected, token="0" * 64)[0] == 403
    assert retry(page, rejected, token, Origin="http://evil.example")[0] == 403
    assert retry(page, rejected, token, Origin="", Referer="")[0] == 403  # no origin at all
    assert retry(page, rejected, token, Sec_Fetch_Site="cross-site")[0] == 403
    assert database_state(database, rejected) == "rejected"

    status, headers, _ = retry(page, rejected, token, Origin="", Referer=f"http://127.0.0.1:{page.server_port}/")
    assert status == 303 and headers["Location"] == f"/?retried={rejected}#failed"
    assert database_state(database, rejected) == "queued"
    assert "Job %d queued again." % rejected in get(page, f"/?retried={rejected}")[2]
    assert retry(page, rejected, token)[0] == 409  # already queued
    assert retry(page, 999, token)[0] == 404
    with database.read() as session:
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == rejected).order_by(JobEvent.id)).all()
    assert kinds[-1] == "requeued"
    assert request(page, f"/jobs/{rejected}/retry", "POST", "x" * 5000, Origin="x")[0] == 413


def database_state(db: Database, job_id: int) -> str:
    found = monitor.job(db, job_id)
    assert found is not None
    return found.row.state


def test_unknown_job_and_path_are_404_and_health_is_ok(page: StatusServer) -> None:
    assert get(page, "/jobs/999")[0] == 404
    assert get(page, "/api/jobs/999")[0] == 404
    assert get(page, "/nothing")[0] == 404
    assert get(page, "/healthz")[:3:2] == (200, "ok\n")


def test_a_page_without_password_answers_loopback_names_only(page: StatusServer) -> None:
    assert get(page, "/", Host=f"localhost:{page.server_port}")[0] == 200
    assert get(page, "/", Host="rebound.evil.example")[0] == 403  # DNS rebinding
    assert get(page, "/metrics", Host="rebound.evil.example")[0] == 403
    assert get(page, "/healthz", Host="rebound.evil.example")[0] == 200



def test_a_page_without_password_behind_an_authenticating_proxy(database: Database) -> None:
    server = StatusServer(database, "127.0.0.1", 0, Access(allowed_hosts=("ainode.hospital.example",))).start()
    try:
        assert get(server, "/", Host="ainode.hospital.example")[0] == 200
        assert get(server, "/", Host="ainode.hospital.example:443")[0] == 200
        assert get(server, "/", Host="rebound.evil.example")[0] == 403
        proxied = {"Host": "ainode.hospital.example", "Origin": "https://ainode.hospital.example"}
        assert retry(server, 999, **proxied)[0] == 404  # past the origin check: there is no job 999
    finally:
        server.stop()


def test_basic_authentication_and_a_bearer_token_for_metrics(database: Database) -> None:
    access = Access("ainode", "s3cret pass", "scrape-token")
    server = StatusServer(database, "127.0.0.1", 0, access).start()
    try:
        status, headers, _ = request(server, "/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
        assert get(server, "/", Authorization=basic("ainode", "wrong"))[0] == 401
        assert get(server, "/", Authorization=basic("other", "s3cret pass"))[0] == 401
        assert get(server, "/api/jobs", Authorization="Bearer scrape-token")[0] == 401
        assert get(server, "/", Authorization=basic("ainode", "s3cret pass"))[0] == 200
        assert get(server, "/", Authorization=basic("ainode", "s3cret pass"), Host="ainode.hospital.example")[0] == 200
        assert get(server, "/healthz")[0] == 200  # always open
        assert get(server, "/metrics")[0] == 401
        assert get(server, "/metrics", Authorization=basic("ainode", "s3cret pass"))[0] == 401
        assert "ainode_database_up" in metrics(server, Authorization="Bearer scrape-token")
        assert request(server, "/jobs/1/retry", "POST", "csrf=" + access.csrf_token)[0] == 401
    finally:
        server.stop()


def test_metrics_from_the_database(page: StatusServer, database: Database) -> None:
    finish_two_jobs(database)
    backing_off = settled_job(database, "1.2.3.8")
    queue.claim(database, "w", POLICY, MODELS)
    queue.fail(database, backing_off, "w", "out of memory", POLICY)  # queued again, due in 10 s
    settled_job(database, "1.2.3.6")
    found = metrics(page)
    assert value(found["ainode_database_up"], "ainode_database_up") == 1
    jobs = found["ainode_jobs"]
    assert {s.labels["state"]: s.value for s in jobs} == {"queued": 2, "running": 0, "succeeded": 1, "failed": 0,
                                                          "rejected": 1, "superseded": 0, "waiting": 0}
    assert value(found["ainode_queue_depth"], "ainode_queue_depth") == 2
    assert value(found["ainode_queue_due"], "ainode_queue_due") == 1
    assert 0 < value(found["ainode_queue_oldest_age_seconds"], "ainode_queue_oldest_age_seconds") < 60
    assert value(found["ainode_deliveries"], "ainode_deliveries", state="pending", destination="pacs") == 1
    stages = found["ainode_stage_duration_seconds"]
    assert value(stages, "ainode_stage_duration_seconds_count", stage="assemble") == 2
    assert value(stages, "ainode_stage_duration_seconds_sum", stage="assemble") == pytest.approx(0.6)
    assert value(stages, "ainode_stage_duration_seconds_bucket", stage="assemble", le="0.25") == 1
    assert value(stages, "ainode_stage_duration_seconds_bucket", stage="assemble", le="0.5") == 2
    assert value(stages, "ainode_stage_duration_seconds_bucket", stage="segment", le="+Inf") == 1
    inference = found["ainode_inference_duration_seconds"]
    assert value(inference, "ainode_inference_duration_seconds_sum", model="lung-model") == pytest.approx(3.0)
    assert value(found["ainode_storage_free_bytes"], "ainode_storage_free_bytes") > 0
    assert "ainode_instances_received" in found and "ainode_associations" in found  # this process's counters


README = Path(__file__).resolve().parents[1] / "README.md"


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """README.md's table of metrics: name (or ``prefix_*``) -> type and labels."""
    section = README.read_text().split("### Prometheus metrics", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            for name in re.findall(r"`([\w*]+)`", cells[0]):
                rows[name] = (cells[1], set(re.findall(r"`(\w+)`", cells[2])))
    return rows


def test_the_readme_documents_exactly_the_metrics_exposed(page: StatusServer, database: Database) -> None:
    """Sites write their alerts and dashboards from the README's table: a metric renamed, added or dropped
    in the code must be so in the table too. Labels are compared for every family that has samples."""
    finish_two_jobs(database)
    documented = documented_metrics()
    status, _, body = get(page, "/metrics")
    assert status == 200, body
    exposed: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(body):
        name = family.name + "_total" if family.type == "counter" else family.name  # the parser drops _total
        exposed[name] = (family.type, {label for s in family.samples for label in s.labels if label != "le"})
    # once a counter or histogram has samples, the text format adds its creation time as a gauge of its own
    # (NAME_created): part of that metric, not another one to document
    for name in [n for n in exposed if n.endswith("_created")]:
        base = name.removesuffix("_created")
        if base + "_total" in exposed or exposed.get(base, ("",))[0] in ("histogram", "summary"):
            del exposed[name]
    for prefix in [name for name in documented if name.endswith("*")]:
        covered = [name for name in exposed if name.startswith(prefix[:-1])]
        assert covered, f"README documents {prefix}, /metrics has none"
        for name in covered:
            del exposed[name]
        del documented[prefix]
    assert {n: t for n, (t, _) in exposed.items()} == {n: t for n, (t, _) in documented.items()}
    for name, (_, labels) in exposed.items():
        if labels:
            assert labels == documented[name][1], (name, labels, documented[name][1])


def test_an_unreadable_database_is_a_503_for_the_page_and_a_200_for_metrics(page: StatusServer,
                                                                          database: Database) -> None:
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP VIEW audit")  # it reads job_events
        connection.exec_driver_sql("DROP TABLE job_events")
    assert get(page, "/")[0] == 503
    assert get(page, "/healthz")[0] == 503
    found = metrics(page)
    assert value(found["ainode_database_up"], "ainode_database_up") == 0
    assert "ainode_jobs" not in found and "ainode_storage_free_bytes" in found


def test_metrics_answer_while_the_database_server_is_down(tmp_path: Path) -> None:
    db = Database(f"postgresql+psycopg://ainode@127.0.0.1:{free_port()}/ainode")  # nothing listens there
    server = StatusServer(db, "127.0.0.1", 0, storage_root=tmp_path).start()
    try:
        assert value(metrics(server)["ainode_database_up"], "ainode_database_up") == 0
        assert get(server, "/healthz")[0] == 503
    finally:
        server.stop()
        db.dispose()


def test_metrics_answer_while_the_database_hangs(postgresql: PostgreSQL, tmp_path: Path) -> None:
    """A reader waits for a lock on PostgreSQL (on SQLite in WAL mode readers never wait)."""
    database = Database(postgresql.new_database())
    database.migrate()
    server = StatusServer(database, "127.0.0.1", 0, storage_root=tmp_path, database_timeout=0.5).start()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with database.engine.begin() as connection:
            connection.exec_driver_sql("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        found = metrics(server)
        assert value(found["ainode_database_up"], "ainode_database_up") == 0
        assert "ainode_storage_free_bytes" in found
    finally:
        release.set()
        holder.join(60)
    try:
        wait_for(lambda: value(metrics(server)["ainode_database_up"], "ainode_database_up") == 1, 30,
                 "the metrics did not come back after the lock was released")
    finally:
        server.stop()
        database.dispose()


def test_the_receivers_counters_are_bounded_and_escaped() -> None:
    from pacs_node import metrics as receiver

    hostile = 'x"y\\z\nw'
    receiver.association(hostile, accepted=False)
    receiver.instance_answered(0xC210)
    for n in range(receiver.MAX_AE_TITLES + 5):  # a caller inventing titles
        receiver.association(f"INVENTED{n}", accepted=False)
    server = StatusServer(Database("sqlite://"), "127.0.0.1", 0).start()
    try:
        found = metrics(server)
    finally:
        server.stop()
    titles = {s.labels["calling_ae_title"] for s in found["ainode_associations"] if s.name.endswith("_total")}
    assert 'x"y\\z\\nw' in titles  # the newline escaped by the receiver, the rest by the exposition format
    assert receiver.OTHER_AE_TITLES in titles and len(titles) <= receiver.MAX_AE_TITLES + 1
    assert value(found["ainode_instances_received"], "ainode_instances_received_total", status="0xC210") >= 1


def test_authentication_is_required_beyond_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ainode.toml"
    config.write_text('[status]\nbind_address = "0.0.0.0"\n')
    with pytest.raises(ConfigurationError, match=r"status\.password_file must be set .*0\.0\.0\.0"):
        load_settings(config)
    for loopback in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        monkeypatch.setenv("AINODE_STATUS__BIND_ADDRESS", loopback)
        assert load_settings(config).status_access().protected is False
    monkeypatch.delenv("AINODE_STATUS__BIND_ADDRESS")
    config.write_text(f'[status]\nbind_address = "0.0.0.0"\npassword_file = "{tmp_path / "pw"}"\n')
    settings = load_settings(config)  # the file is read when the page starts, naming the key if it cannot be
    with pytest.raises(ConfigurationError, match=r"status\.password_file: cannot read .*pw"):
        settings.status_access()
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ConfigurationError, match=r"status\.password_file: .* is empty"):
        settings.status_access()
    (tmp_path / "pw").write_text("correct horse\n")
    access = settings.status_access()
    assert (access.username, access.password, access.protected) == ("ainode", "correct horse", True)
    assert "correct horse" not in repr(access)
    config.write_text('[status]\nusername = "a:b"\n')
    with pytest.raises(ConfigurationError, match=r"status\.username"):
        load_settings(config)


def test_stage_times_are_added_once_even_when_committed_out_of_order(database: Database) -> None:
    job = settled_job(database)
    queue.claim(database, "w", POLICY, MODELS)
    queue.record_stage(database, job, "w", "assemble", 1.0)
    totals = exporter.StageHistograms(overlap=10)
    totals.update(database)
    totals.update(database)
    assert totals.stages["assemble"].count == 1

    def stage_event(event_id: int, seconds: float) -> None:
        with database.transaction() as session:
            session.add(JobEvent(id=event_id, job_id=job, kind="stage", stage="assemble", seconds=seconds,
                                 attempt=1, at=utcnow(), message=""))

    top = overview.last_event_id(database)
    stage_event(top + 10, 2.0)  # a higher id committed first...
    totals.update(database)
    stage_event(top + 5, 4.0)  # ...and a lower one after it, as PostgreSQL allows
    totals.update(database)
    totals.update(database)
    assert (totals.stages["assemble"].count, totals.stages["assemble"].total) == (3, 7.0)
    restarted = exporter.StageHistograms(overlap=10)  # a new process sums everything in SQL
    restarted.update(database)
    assert restarted.stages["assemble"].histogram() == totals.stages["assemble"].histogram()
    assert restarted.models == {} and totals.models == {}  # no model stage ran


def test_the_audit_trail_shows_associations_deliveries_and_job_events_escaped(page: StatusServer,
                                                                              database: Database) -> None:
    from db import audit

    audit.record_refusal(database, "receiver:test", "<b>EVIL</b>", "10.9.8.7", False,
                         "calling AE title '<b>EVIL</b>' is not an allowed caller")
    audit.record_refusal(database, "receiver:test", "<b>EVIL</b>", "10.9.8.7", False,
                         "calling AE title '<b>EVIL</b>' is not an allowed caller")
    audit.record(database, "receiver:test", "association", "accepted", subject="1.2.3", detail="3 instances stored",
                 calling_ae_title="STORESCU", address="127.0.0.1", tls=True)
    job_id = settled_job(database)
    status, kind, body = get(page, "/audit")
    assert status == 200 and kind.startswith("text/html")
    assert "&lt;b&gt;EVIL&lt;/b&gt;" in body and "<b>EVIL</b>" not in body
    assert "10.9.8.7" in body and ">2<" in body, "two refusals on one row"
    assert "3 instances stored" in body and f"job {job_id}" in body and "series settled" in body
    assert [row.kind for row in audit.trail(database)][:1] == ["job"]
