"""The command line on a real database: jobs, job, retry, check-config, status."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ainode.cli import app
from conftest import free_port, wait_for
from db import queue
from db.engine import Database
from test_queue import MODELS, POLICY, settled_job

runner = CliRunner()


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ainode.toml"
    path.write_text(f'[storage]\nroot = "{tmp_path / "data"}"\n')
    return path


def test_jobs_job_and_retry_show_and_change_what_is_in_the_database(config: Path, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'data' / 'ainode.db'}")
    db.migrate()
    job_id = settled_job(db)
    queue.claim(db, "host:1", POLICY, MODELS)
    queue.record_stage(db, job_id, "host:1", "assemble", 0.25, "64x64x20")
    queue.fail(db, job_id, "host:1", "uneven slice spacing: 10.00 mm between -40.00 and -30.00 mm", POLICY,
               retry=False)

    listing = runner.invoke(app, ["jobs", "--config", str(config)])
    assert listing.exit_code == 0, listing.output
    assert "rejected" in listing.output and "P1" in listing.output and "assemble 0.2s" in listing.output
    assert "uneven slice spacing" in listing.output

    detail = runner.invoke(app, ["job", str(job_id), "--config", str(config)])
    assert detail.exit_code == 0, detail.output
    for text in ("lung-model", "claimed", "rejected", "1.2.3.4", "host:1"):
        assert text in detail.output

    again = runner.invoke(app, ["retry", str(job_id), "--config", str(config)])
    assert again.exit_code == 0 and f"job {job_id} queued again" in again.output
    assert runner.invoke(app, ["retry", str(job_id), "--config", str(config)]).exit_code == 2, "already queued"
    assert runner.invoke(app, ["job", "999", "--config", str(config)]).exit_code == 2


def test_a_bad_configuration_stops_the_command_with_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = -1\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "node.port" in result.output


def test_ainode_status_serves_the_page_until_stopped(config: Path, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'data' / 'ainode.db'}")
    db.migrate()
    job_id = settled_job(db)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ainode.cli", "status", "--config", str(config),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def page() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                return ""

        assert process.poll() is None
        body = wait_for(lambda: process.poll() is not None or page(), 60, "ainode status did not answer")
        assert f'<a href="/jobs/{job_id}">{job_id}</a>' in str(body) and "queued" in str(body)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
