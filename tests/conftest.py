"""Shared fixtures: free ports, waiting for conditions, phantom series, real DCMTK peers, a node process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from ainode.demo import free_port, wait_for
from db.engine import Database
from worker.phantom import PhantomCase, StudyIdentity, make_case, write_series

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

__all__ = ["free_port", "wait_for"]


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed (apt-get install dcmtk dicom3tools); .ci/run installs it")
    return path


@dataclass(frozen=True)
class PhantomSeries:
    case: PhantomCase
    identity: StudyIdentity
    paths: list[Path]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.paths]


def phantom_series(folder: Path, seed: int, lesions: tuple[int, int] = (1, 4), **grid: object) -> PhantomSeries:
    grid = {"matrix": 192, "slice_thickness": 3.0, "orientation": "HFS", **grid}
    case = make_case(seed, lesions=lesions, **grid)  # type: ignore[arg-type]
    identity = StudyIdentity.from_seed(seed)
    paths = write_series(case.hu, case.grid, identity, folder, case.patient_position)
    return PhantomSeries(case, identity, paths)


@pytest.fixture(scope="session")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    """A 192x192 phantom chest CT, written once per test session."""
    return phantom_series(tmp_path_factory.mktemp("phantom-small"), seed=11)


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'test.db'}")
    db.migrate()
    yield db
    db.dispose()


class StoreSCP:
    """DCMTK storescp as the PACS that receives results, on a free port, stopped by the test."""

    def __init__(self, folder: Path, ae_title: str = "PACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "StoreSCP":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require("storescp"), "-aet", self.ae_title, "-od", str(self.folder), "-uf", "-fe", ".dcm", str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for(lambda: echoscu(self.port, self.ae_title, "PROBE"), 20, "storescp did not start")
        return self

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Errors and warnings of dicom3tools' validator on one file."""
    result = subprocess.run([require("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [l for l in lines if l.startswith("Error")], [l for l in lines if l.startswith("Warning")]


def echoscu(port: int, called: str, calling: str = "STORESCU") -> bool:
    result = subprocess.run([require("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                            env=DCMTK_ENV, capture_output=True, timeout=30)
    return result.returncode == 0


def storescu(port: int, paths: list[Path], calling: str = "STORESCU", called: str = "AINODE",
             extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("storescu"), "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port),
         *[str(p) for p in paths]],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs").start()
    yield scp
    scp.stop()


class NodeProcess:
    """``ainode serve`` (or ``ainode worker``) as a subprocess with its own config file."""

    def __init__(self, root: Path, pacs_port: int, **overrides: object) -> None:
        self.root = root
        self.port = free_port()
        self.pacs_port = pacs_port
        self.config = root / "ainode.toml"
        options = {"settle_seconds": 0.5, "lease_seconds": 10.0, "max_attempts": 3, "backoff_seconds": 1.0,
                   "workers": 1, "callers": '["STORESCU", "AINODE-DEMO"]', "pacs_ae": "PACS", **overrides}
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[node]
port = {self.port}
allowed_calling_ae_titles = {options['callers']}
[storage]
root = "{root / 'data'}"
[queue]
settle_seconds = {options['settle_seconds']}
lease_seconds = {options['lease_seconds']}
max_attempts = {options['max_attempts']}
backoff_seconds = {options['backoff_seconds']}
[worker]
count = {options['workers']}
threads = 2
poll_seconds = 0.2
[destinations.pacs]
host = "127.0.0.1"
port = {pacs_port}
ae_title = "{options['pacs_ae']}"
[delivery]
backoff_seconds = 0.5
backoff_max_seconds = 2.0
""")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{command}-{len(self.logs)}.log"
        self.logs.append(log)
        process = subprocess.Popen([sys.executable, "-m", "ainode.cli", command, "--config", str(self.config)],
                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def serve(self) -> "NodeProcess":
        process = self._spawn("serve")
        wait_for(lambda: process.poll() is not None or echoscu(self.port, "AINODE"), 90,
                 lambda: f"ainode serve did not answer C-ECHO; log: {self.log_text()}")
        assert process.poll() is None, self.log_text()
        return self

    def worker(self) -> subprocess.Popen[bytes]:
        return self._spawn("worker")

    def database(self) -> Database:
        return Database(f"sqlite:///{(self.root / 'data' / 'ainode.db').resolve()}")

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture()
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(pacs_port: int, **overrides: object) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(made)}", pacs_port, **overrides)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
