"""The fault suite at reduced counts (``benchmarks/faults.py`` runs it in full): kill -9 of the receiver
and of a worker, a destination down, a full disk, a locked database. Nothing acknowledged is lost, nothing
half-written stays, no result is made from a partial series, each job is finished once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import HEADER, Tally, database_locked, destination_down, disk_full, kill_receiver, kill_worker

pytestmark = pytest.mark.slow
RUNS = int(os.environ.get("FAULT_RUNS", "5"))


def check(name: str, tally: Tally, runs: int) -> None:
    print(f"\n{HEADER}\n{tally.row(name)}")
    assert tally.runs == runs and tally.acknowledged > 0
    assert tally.clean, tally


def test_kill_the_receiver_at_random_points(tmp_path: Path) -> None:
    check("kill -9 receiver", kill_receiver(tmp_path, RUNS, seed=1), RUNS)


def test_kill_a_worker_in_the_middle_of_a_stage(tmp_path: Path) -> None:
    check("kill -9 worker", kill_worker(tmp_path, RUNS, seed=1), RUNS)


def test_a_destination_down_delays_delivery_and_says_so(tmp_path: Path) -> None:
    check("destination down", destination_down(tmp_path, seconds=float(os.environ.get("FAULT_DOWN_SECONDS", 15))), 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_refuses_with_out_of_resources(tmp_path: Path) -> None:
    check("disk full", disk_full(tmp_path), 1)


def test_a_locked_database_refuses_with_out_of_resources(tmp_path: Path) -> None:
    check("database locked", database_locked(tmp_path), 1)
