"""The status page and /metrics of a real running ``ainode serve``: a series processed (its results
waiting for a PACS that is down), a series with a missing slice and hostile header values rejected, an
unknown caller refused and a truncated file answered 0xC210. /metrics is scraped with its bearer token
and parsed with prometheus_client's parser; the page is opened in headless Chromium (Selenium) with HTTP
basic authentication, shows the hostile values as text, and its retry button is pressed for real.
Screenshots land in ``test-artifacts/``."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from ainode.kit import send_files, wait_for
from conftest import NodeProcess, PhantomSeries, echoscu, free_port, phantom_series, storescu
from db import monitor
from test_ohif import ARTIFACTS, chromium

pytestmark = pytest.mark.slow
PASSWORD, TOKEN = "correct horse battery", "scrape-me-please"
PATIENT_NAME = "<script>alert('x')</script>"
DESCRIPTION = '"><img src=x onerror=alert(1)>'


def fetch(url: str, authorization: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def jobs(node: NodeProcess) -> dict[str, monitor.JobRow]:
    db = node.database()
    try:
        return {row.series_instance_uid: row for row in monitor.jobs(db)}
    finally:
        db.dispose()


def broken_series(folder: Path) -> list[Path]:
    """A phantom series with its middle slice left out (rejected: missing slice) and header values that
    are HTML."""
    series = phantom_series(folder, seed=23, lesions=(1, 1), matrix=128)
    paths = series.paths[: len(series.paths) // 2] + series.paths[len(series.paths) // 2 + 1:]
    for path in paths:
        ds = dcmread(path)
        ds.PatientName, ds.SeriesDescription = PATIENT_NAME, DESCRIPTION
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_metrics_and_the_page_in_chromium_of_a_running_node(tmp_path: Path, node_factory,  # type: ignore[no-untyped-def]
                                                             small_series: PhantomSeries) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "token").write_text(TOKEN + "\n")
    node: NodeProcess = node_factory(free_port(), status_port=free_port(),  # the PACS is down: nothing listens
                                     extra=f'password_file = "{tmp_path / "password"}"\n'
                                           f'metrics_token_file = "{tmp_path / "token"}"')
    node.serve()
    page = f"http://127.0.0.1:{node.status_port}"
    broken = broken_series(tmp_path / "broken")
    assert storescu(node.port, small_series.paths).returncode == 0
    assert storescu(node.port, broken).returncode == 0
    assert not echoscu(node.port, "AINODE", calling="INTRUDER")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(small_series.paths[0].read_bytes()[:-5000])
    assert send_files([truncated], node.port, calling="STORESCU") == [0xC210]
    good_uid, broken_uid = (dcmread(p[0], stop_before_pixels=True).SeriesInstanceUID
                            for p in (small_series.paths, broken))

    def settled() -> bool:
        found = jobs(node)
        return good_uid in found and found[good_uid].state == "succeeded" and \
            broken_uid in found and found[broken_uid].state == "rejected"

    wait_for(settled, 240, lambda: f"jobs: {jobs(node)}\n{node.log_text()}")
    rejected = jobs(node)[broken_uid]
    assert "missing slice" in (rejected.error or ""), rejected.error

    # /metrics, with its bearer token
    assert fetch(f"{page}/metrics")[0] == 401
    started = time.perf_counter()
    status, body = fetch(f"{page}/metrics", f"Bearer {TOKEN}")
    print(f"scrape: {time.perf_counter() - started:.3f} s, {len(body)} bytes")
    assert status == 200, body
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("ainode_database_up", ())] == 1
    assert samples[("ainode_jobs", (("state", "succeeded"),))] == 1
    assert samples[("ainode_jobs", (("state", "rejected"),))] == 1
    assert samples[("ainode_queue_depth", ())] == 0
    stored = len(small_series.paths) + len(broken)
    assert samples[("ainode_instances_received_total", (("status", "0x0000"),))] == stored
    assert samples[("ainode_instances_received_total", (("status", "0xC210"),))] == 1
    assert samples[("ainode_associations_total", (("calling_ae_title", "INTRUDER"), ("result", "refused")))] == 1
    accepted = ("ainode_associations_total", (("calling_ae_title", "STORESCU"), ("result", "accepted")))
    assert samples[accepted] >= 3  # the two series and the truncated file, and the start-up probes
    waiting = sum(v for (name, labels), v in samples.items()
                  if name == "ainode_deliveries" and ("destination", "pacs") in labels and
                  dict(labels)["state"] in ("pending", "sending"))
    assert waiting == 2  # the SEG and the SR
    assert samples[("ainode_deliveries_oldest_waiting_age_seconds", ())] > 0
    assert samples[("ainode_stage_duration_seconds_count", (("stage", "segment"),))] == 1
    # a rejected attempt records no stage time: only the processed series' stages are counted
    assert samples[("ainode_stage_duration_seconds_count", (("stage", "assemble"),))] == 1
    model = jobs(node)[good_uid].model  # the configured name: "demo", the bundled model
    assert samples[("ainode_inference_duration_seconds_count", (("model", model),))] == 1
    assert samples[("ainode_storage_free_bytes", ())] > 0

    # the page, as a person sees it
    credentials = "Basic " + base64.b64encode(f"ainode:{PASSWORD}".encode()).decode()
    assert fetch(f"{page}/")[0] == 401 and fetch(f"{page}/", credentials)[0] == 200
    browser = chromium()
    try:
        browser.set_page_load_timeout(60)
        browser.set_window_size(1600, 1500)  # the whole page in the screenshots
        browser.get(f"http://ainode:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{node.status_port}/")
        wait_for(lambda: "Failed and rejected jobs" in browser.page_source, 30,
                 lambda: f"the page did not load: {browser.page_source[:1000]}")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert PATIENT_NAME in text and DESCRIPTION in text, "the hostile values are not shown as text"
        injected = browser.execute_script("return document.querySelectorAll('script, img, iframe').length")
        assert injected == 0, "a header value became an element"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "status-page.png"))

        browser.find_element(By.ID, f"retry-{rejected.id}").click()
        wait_for(lambda: f"Job {rejected.id} queued again." in browser.page_source, 30,
                 lambda: f"no notice after pressing retry: {browser.page_source[:2000]}")
        assert f"retried={rejected.id}" in browser.current_url
        browser.save_screenshot(str(ARTIFACTS / "status-page-retried.png"))
    finally:
        browser.quit()
    wait_for(lambda: (row := jobs(node)[broken_uid]).state == "rejected" and row.attempts == 2, 120,
             lambda: f"the retried job did not run again: {jobs(node)[broken_uid]}\n{node.log_text()}")
    db = node.database()
    try:
        detail = monitor.job(db, rejected.id)
    finally:
        db.dispose()
    assert detail is not None
    assert [e.kind for e in detail.events].count("requeued") == 1
