"""Fault scenarios against the real node (``ainode serve`` and ``ainode worker`` as processes, DCMTK peers),
shared by ``tests/faults`` (reduced counts, in CI) and ``benchmarks/faults.py`` (full counts).

Each scenario returns a ``Tally``: runs, instances acknowledged, and what must stay zero: acknowledged
instances lost, duplicated or partial results, crashes (a node that died by itself or did not come back),
and leftovers (temporary or unrecorded files after a restart).
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from sqlalchemy import func, select

from ainode.kit import free_port, wait_for
from conftest import DCMTK_ENV, NodeProcess, PhantomSeries, StoreSCP, phantom_series, require, storescu
from db import monitor
from db.models import Delivery, Instance, Job, JobEvent, Result, Series


@dataclass
class Tally:
    runs: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    partial_results: int = 0
    crashes: int = 0
    leftovers: int = 0

    def add(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.partial_results == self.crashes == self.leftovers == 0

    def row(self, name: str) -> str:
        return f"{name:22s} " + " ".join(f"{getattr(self, f.name):>12d}" for f in fields(self))


HEADER = f"{'scenario':22s} " + " ".join(f"{f.name:>12s}" for f in fields(Tally))


def series_for_faults(folder: Path, seed: int = 5, slices: int = 120) -> PhantomSeries:
    """Small slices, many of them: a transfer long enough to be cut at many points."""
    return phantom_series(folder, seed=seed, matrix=96, slice_thickness=2.5, min_slices=slices)


def acknowledged(output: str) -> int:
    """How many files storescu (-v) got a success response for; it sends them in the order given."""
    return output.count("Received Store Response (Success)")


def refused_out_of_resources(output: str) -> bool:
    """Whether storescu (-v) was answered 0xA700 (it names the status rather than printing the code)."""
    return "Received Store Response (Refused: OutOfResources)" in output


def stored(node: NodeProcess) -> tuple[set[str], int]:
    """SOP Instance UIDs recorded (whose file is on disk, complete) and the number of files left over:
    temporary files, and files without a row."""
    db = node.database()
    try:
        with db.read() as session:
            rows = session.execute(select(Instance.sop_instance_uid, Instance.path, Instance.size_bytes)).all()
    finally:
        db.dispose()
    root = node.storage_root
    good = {uid for uid, path, size in rows if (root / path).is_file() and (root / path).stat().st_size == size}
    recorded = {str(root / path) for _, path, _ in rows}
    files = [p for p in (root / "incoming").rglob("*") if p.is_file()] if (root / "incoming").exists() else []
    leftovers = [p for p in files if p.name.endswith(".part") or str(p) not in recorded]
    return good, len(leftovers)


def jobs_of(node: NodeProcess, series_uid: str) -> list[tuple[int, str, int]]:
    """(job id, state, instances when it was queued) for each job of a series."""
    db = node.database()
    try:
        with db.read() as session:
            series_id = session.scalar(select(Series.id).where(Series.series_instance_uid == series_uid))
            jobs = session.scalars(select(Job).where(Job.series_id == series_id).order_by(Job.id)).all()
            out = []
            for job in jobs:
                queued = session.scalar(select(JobEvent.message).where(JobEvent.job_id == job.id,
                                                                       JobEvent.kind == "queued"))
                out.append((job.id, job.state, int(str(queued).split(" with ")[1].split()[0])))
            return out
    finally:
        db.dispose()


def kill_receiver(root: Path, runs: int, seed: int = 0) -> Tally:
    """kill -9 of ``ainode serve`` at a random point of a transfer; the sender retries after the restart.
    Every acknowledged instance must be there, nothing half-written, and one job for the whole series."""
    rng = random.Random(seed)
    series = series_for_faults(root / "series")
    tally = Tally()
    for run in range(runs):
        node = NodeProcess(root / f"run{run}", free_port(), workers=0, incomplete_settle_seconds=600)
        try:
            node.serve()
            sender = subprocess.Popen([require("storescu"), "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                                       str(node.port), *map(str, series.paths)], env=DCMTK_ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            target = rng.randint(0, len(series.paths) - 1)
            wait_for(lambda: _instances(node) >= target or sender.poll() is not None, 60, "the transfer did not start")
            node.processes[-1].send_signal(signal.SIGKILL)
            output, _ = sender.communicate(timeout=60)
            acked = acknowledged(output)
            tally.runs += 1
            tally.acknowledged += acked
            node.processes[-1].wait(timeout=30)
            node.serve()  # the restart reconciles storage and marks the series possibly partial
            good, leftovers = stored(node)
            tally.lost += len(set(series.sop_instance_uids[:acked]) - good)
            tally.leftovers += leftovers
            retry = storescu(node.port, series.paths)
            if retry.returncode != 0:
                tally.crashes += 1
                continue
            wait_for(lambda: jobs_of(node, series.identity.series_instance_uid), 60, "no job after the retry")
            jobs = jobs_of(node, series.identity.series_instance_uid)
            tally.duplicated += len(jobs) - 1
            tally.partial_results += sum(1 for _, _, n in jobs if n != len(series.paths))
            tally.crashes += sum(1 for p in node.processes[1:] if p.poll() is not None)
        finally:
            node.stop()
    return tally


def _instances(node: NodeProcess) -> int:
    db = node.database()
    try:
        with db.read() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    except Exception:
        return 0
    finally:
        db.dispose()


def kill_worker(root: Path, runs: int, seed: int = 0) -> Tally:
    """kill -9 of a worker right after one of its stages (chosen at random); another worker takes the job
    over when the lease expires. Each job must succeed once and each result be delivered once."""
    rng = random.Random(seed)
    tally = Tally()
    for run in range(runs):
        series = phantom_series(root / f"series{run}", seed=100 + run, matrix=96, slice_thickness=5.0)
        pacs = StoreSCP(root / f"pacs{run}").start()
        node = NodeProcess(root / f"run{run}", pacs.port, workers=0, lease_seconds=3.0)
        try:
            node.serve()
            first = node.worker()
            assert storescu(node.port, series.paths).returncode == 0
            after = rng.choice(["claimed", "assemble", "segment", "postprocess"])
            wait_for(lambda: _reached(node, after) or first.poll() is not None, 120,
                     lambda: f"the worker did not reach {after}: {node.log_text()}")
            first.send_signal(signal.SIGKILL)
            node.worker()
            wait_for(lambda: _delivered(node) >= 2, 180, lambda: f"results not delivered: {node.log_text()}")
            tally.runs += 1
            tally.acknowledged += len(series.paths)
            db = node.database()
            with db.read() as session:
                jobs = session.scalars(select(Job)).all()
                succeeded = session.scalar(select(func.count()).select_from(JobEvent)
                                           .where(JobEvent.kind == "succeeded"))
                results = session.scalar(select(func.count()).select_from(Result))
                sends = session.scalars(select(Delivery.attempts)).all()
            db.dispose()
            tally.duplicated += (int(succeeded or 0) - 1) + (int(results or 0) - 2) + sum(a - 1 for a in sends)
            tally.partial_results += sum(1 for j in jobs if j.state != "succeeded")
            tally.crashes += sum(1 for p in node.processes if p is not first and p.poll() is not None)
        finally:
            node.stop()
            pacs.stop()
    return tally


def _reached(node: NodeProcess, after: str) -> bool:
    db = node.database()
    try:
        with db.read() as session:
            query = select(JobEvent.id).where(JobEvent.kind == "claimed") if after == "claimed" else \
                select(JobEvent.id).where(JobEvent.stage == after)
            return session.scalar(query) is not None
    finally:
        db.dispose()


def _delivered(node: NodeProcess) -> int:
    db = node.database()
    try:
        with db.read() as session:
            return int(session.scalar(select(func.count()).select_from(Delivery)
                                      .where(Delivery.state == "delivered")) or 0)
    finally:
        db.dispose()


def destination_down(root: Path, seconds: float) -> Tally:
    """The PACS is down for ``seconds`` after the job succeeded: the job says its results are waiting the
    whole time, and everything is delivered once the PACS is back."""
    series = phantom_series(root / "series", seed=7, matrix=96, slice_thickness=5.0)
    port = free_port()
    node = NodeProcess(root / "node", port)
    tally = Tally(runs=1)
    pacs = StoreSCP(root / "pacs")
    pacs.port = port
    try:
        node.serve()
        assert storescu(node.port, series.paths).returncode == 0
        tally.acknowledged = len(series.paths)
        row = wait_for(lambda: _succeeded(node), 180, lambda: f"the job did not succeed: {node.log_text()}")
        if not holds_for(seconds, lambda: (shown := _succeeded(node)) is not None and shown.delivered == "0/2 waiting"):
            tally.partial_results += 1  # the job did not say that its results were waiting
        pacs.start()
        wait_for(lambda: _delivered(node) == 2, 120, lambda: f"not delivered after the PACS came back: "
                 f"{node.log_text()}")
        tally.lost += 2 - len(pacs.files())
        tally.duplicated += 0 if row is not None else 1
    finally:
        node.stop()
        pacs.stop()
    return tally


def _succeeded(node: NodeProcess) -> monitor.JobRow | None:
    db = node.database()
    try:
        rows = [r for r in monitor.jobs(db) if r.state == "succeeded"]
        return rows[0] if rows else None
    finally:
        db.dispose()


def holds_for(seconds: float, condition: Callable[[], bool], interval: float = 1.0) -> bool:
    """Whether ``condition`` stays true, checked every ``interval``, while a fault lasts ``seconds``."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while time.monotonic() < deadline:
        if not condition():
            return False
        pause.wait(min(interval, max(0.0, deadline - time.monotonic())))
    return condition()


def _no_job_while(node: NodeProcess, series_uid: str, seconds: float) -> bool:
    """No job appears for the series while ``seconds`` pass (well past the normal settle time)."""
    return holds_for(seconds, lambda: not jobs_of(node, series_uid), interval=0.5)


def _partial_then_complete(node: NodeProcess, series: PhantomSeries, acked: int, tally: Tally,
                           lift: Callable[[], None]) -> None:
    """After a transfer the fault cut short (the first ``acked`` files acknowledged): those are stored,
    nothing else is left, no job appears from the partial series; once the fault is lifted the sender's
    retry gives one whole job."""
    tally.runs += 1
    tally.acknowledged += acked
    good, leftovers = stored(node)
    tally.lost += len(set(series.sop_instance_uids[:acked]) - good)
    tally.leftovers += leftovers
    if acked == len(series.paths):
        tally.crashes += 1  # the fault did not bite: the scenario proved nothing
    if not _no_job_while(node, series.identity.series_instance_uid, 3.0):
        tally.partial_results += 1
    lift()
    if storescu(node.port, series.paths).returncode != 0:
        tally.crashes += 1
        return
    wait_for(lambda: jobs_of(node, series.identity.series_instance_uid), 60, "no job after the retry")
    jobs = jobs_of(node, series.identity.series_instance_uid)
    tally.duplicated += len(jobs) - 1
    tally.partial_results += sum(1 for _, _, n in jobs if n != len(series.paths))
    tally.crashes += sum(1 for p in node.processes if p.poll() is not None)


def disk_full(root: Path, megabytes: int = 1) -> Tally:
    """Storage on a tmpfs too small for the series: refused instances get 0xA700 and nothing half-written
    stays; the partial series waits; after space is given the retry completes it. Needs root (mount)."""
    series = series_for_faults(root / "series")
    storage = root / "tmpfs"
    storage.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(storage)], check=True)
    # no free-space watermark: this is the disk filling up under a transfer (tests/test_watermark.py has that)
    node = NodeProcess(root / "node", free_port(), workers=0, storage_root=storage,
                       database_url=f"sqlite:///{root / 'ainode.db'}", minimum_free_gb=0, minimum_free_percent=0)
    tally = Tally()
    try:
        node.serve()
        cut = subprocess.run([require("storescu"), "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                              str(node.port), *map(str, series.paths)], env=DCMTK_ENV, capture_output=True,
                             text=True, timeout=300)
        if not refused_out_of_resources(cut.stdout + cut.stderr):
            tally.crashes += 1  # the sender must have been told: out of resources
        _partial_then_complete(node, series, acknowledged(cut.stdout + cut.stderr), tally, lambda: subprocess.run(
            ["mount", "-o", "remount,size=64m", str(storage)], check=True))
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(storage)], check=False)
    return tally


def database_locked(root: Path) -> Tally:
    """Another process takes the SQLite database's write lock in the middle of a transfer: the instances that
    cannot be recorded get 0xA700 and leave no file, the partial series waits, the retry completes it."""
    import sqlite3

    series = series_for_faults(root / "series", slices=60)
    node = NodeProcess(root / "node", free_port(), workers=0)
    tally = Tally()
    try:
        node.serve()
        sender = subprocess.Popen([require("storescu"), "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                                   str(node.port), *map(str, series.paths)], env=DCMTK_ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: _instances(node) >= len(series.paths) // 3, 60, "the transfer did not start")
        lock = sqlite3.connect(node.database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            output, _ = sender.communicate(timeout=300)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        if not refused_out_of_resources(output):
            tally.crashes += 1  # the sender must have been told: out of resources
        _partial_then_complete(node, series, acknowledged(output), tally, lambda: None)
    finally:
        node.stop()
    return tally
