"""Workers live and die with the node that started them, and wait for a locked database at start-up."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from ainode.kit import free_port, wait_for
from conftest import NodeProcess

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_node_leaves_no_worker_behind(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", free_port(), workers=2)
    try:
        serve = node.serve().processes[0]
        workers = wait_for(lambda: len(children(serve.pid)) == 2 and children(serve.pid), 60, "no workers started")
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in workers), 30,  # type: ignore[union-attr]
                 lambda: f"orphan workers still running: {[p for p in workers if alive(p)]}")  # type: ignore[union-attr]
    finally:
        node.stop()
        for pid in children(os.getpid()):
            if alive(pid) and pid not in (p.pid for p in node.processes):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_waits_for_a_locked_database_at_start_up(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", free_port(), workers=0)
    node.config.write_text(node.config.read_text().replace("[database]", "[database]\nbusy_timeout_seconds = 0.2"))
    db = node.database()
    db.migrate()
    db.dispose()
    lock = sqlite3.connect(node.database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        worker = node.worker()
        wait_for(lambda: "cannot be opened" in node.log_text() or worker.poll() is not None, 60,
                 lambda: f"the worker did not report the lock: {node.log_text()}")
        assert worker.poll() is None, node.log_text()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: "ready" in node.log_text() or worker.poll() is not None, 120,
             lambda: f"the worker did not start once the lock was gone: {node.log_text()}")
    assert worker.poll() is None, node.log_text()
    node.stop()
