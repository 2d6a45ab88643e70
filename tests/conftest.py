"""Shared fixtures: free ports, waiting for conditions, phantom series, real DCMTK peers, a node process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from ainode.kit import free_port, wait_for
from db.engine import Database
from training.dicom import StudyIdentity, slice_uid, write_series
from training.phantom import PhantomCase, make_case
from worker.models.spec import load_spec
from worker.models.unet import UNetRuntime

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

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
        return [slice_uid(self.identity, k) for k in range(len(self.paths))]


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


class PostgreSQL:
    """Debian's PostgreSQL server in a throw-away cluster on a free loopback port, one per test session;
    each test gets a database of its own. (PostgreSQL refuses to run as root: as root the cluster belongs
    to the ``postgres`` system user the Debian package creates.)"""

    def __init__(self) -> None:
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if not binaries:
            pytest.fail("Debian's postgresql is needed (apt-get install postgresql; .ci/run installs it)")
        self.bin = binaries[-1].parent
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
        self.as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            self.as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
            shutil.chown(self.folder, "postgres", "postgres")
        self.process: subprocess.Popen[bytes] | None = None
        self.count = 0

    def start(self) -> None:
        data = self.folder / "data"
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", "ainode", "--auth=trust", "-E", "UTF8",
                        "--locale=C"], check=True, capture_output=True, timeout=120, cwd=self.folder,
                       **self.as_user)  # type: ignore[call-overload]
        self.log = open(self.folder / "server.log", "wb")
        self.process = subprocess.Popen([str(self.bin / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                         "-p", str(self.port), "-k", str(self.folder)], cwd=self.folder,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        **self.as_user)  # type: ignore[call-overload]
        wait_for(lambda: self.process.poll() is not None or self._answers(), 60,  # type: ignore[union-attr]
                 lambda: (self.folder / "server.log").read_text(errors="replace"))
        assert self.process.poll() is None, (self.folder / "server.log").read_text(errors="replace")

    def _answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def url(self, name: str, driver: str = "") -> str:
        return f"postgresql{driver}://ainode@127.0.0.1:{self.port}/{name}"

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        self.count += 1
        name = f"test_{self.count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name, "+psycopg")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            self.process.wait(timeout=60)
        if self.process is not None:
            self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def runtime() -> UNetRuntime:
    """The bundled demo model on the CPU, loaded once per module."""
    return UNetRuntime(load_spec(), device="cpu")


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    server = PostgreSQL()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    server: PostgreSQL = request.getfixturevalue("postgresql")
    return server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database: each test that takes it runs on SQLite and on PostgreSQL."""
    db = Database(database_url(request.param, tmp_path, request))
    db.migrate()
    yield db
    db.dispose()


class StoreSCP:
    """DCMTK storescp as the PACS that receives results, on a free port, stopped by the test."""

    def __init__(self, folder: Path, ae_title: str = "PACS", extra: list[str] | None = None) -> None:
        """``extra``: more storescp options (e.g. ``+tls key cert +cf ca``, which also makes the start-up
        check a TLS echo)."""
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "StoreSCP":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require("storescp"), "-aet", self.ae_title, *self.extra, "-od", str(self.folder), "-uf", "-fe", ".dcm",
             str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: echoscu(self.port, self.ae_title, "PROBE", self.extra), 20, "storescp did not start")
        except TimeoutError:
            self.stop()
            raise
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
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def echoscu(port: int, called: str, calling: str = "STORESCU", extra: list[str] | None = None) -> bool:
    result = subprocess.run([require("echoscu"), "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1",
                             str(port)], env=DCMTK_ENV, capture_output=True, timeout=30)
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
        self.storage_root = Path(str(overrides.get("storage_root", root / "data")))
        self.config = root / "ainode.toml"
        self.database_url = str(overrides.pop("database_url", "")) or \
            f"sqlite:///{(root / 'data' / 'ainode.db').resolve()}"
        self.status_port = int(overrides.pop("status_port", 0))  # type: ignore[call-overload]
        options = {"settle_seconds": 0.5, "incomplete_settle_seconds": 600.0, "lease_seconds": 10.0,
                   "max_attempts": 3, "backoff_seconds": 1.0, "workers": 1, "callers": '["STORESCU", "AINODE-DEMO"]',
                   "pacs_ae": "PACS", "storage_root": root / "data", "extra": "", "node_extra": "", **overrides}
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[node]
port = {self.port}
allowed_calling_ae_titles = {options['callers']}
{options['node_extra']}
[storage]
root = "{options['storage_root']}"
minimum_free_gb = {options.get('minimum_free_gb', 0.2)}
minimum_free_percent = {options.get('minimum_free_percent', 0.5)}
[database]
url = "{self.database_url}"
[queue]
settle_seconds = {options['settle_seconds']}
incomplete_settle_seconds = {options['incomplete_settle_seconds']}
lease_seconds = {options['lease_seconds']}
max_attempts = {options['max_attempts']}
backoff_seconds = {options['backoff_seconds']}
{f'[models.main]{chr(10)}path = "{options["model"]}"' if options.get("model") else ""}
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
[status]
port = {self.status_port}
{options['extra']}
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

    def memory(self) -> dict[str, int]:
        """VmRSS, VmHWM (kB) and Threads of the serving process, from /proc."""
        out = {}
        for line in Path(f"/proc/{self.processes[0].pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        return out

    def database(self) -> Database:
        return Database(self.database_url)

    def delivered(self) -> bool:
        """Every job has ended and every result reached its destinations (recorded once the PACS answered,
        so once its files are whole): only then may a test read the PACS's folder."""
        with self.database().read() as session:
            rows = session.execute(text("SELECT progress FROM job_delivery")).scalars().all()
        return bool(rows) and all(r in ("delivered", "rejected", "failed") for r in rows)

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


class Orthanc:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http = free_port()
        self.dicom = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, node_port: int) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ainode-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.http, "DicomPort": self.dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {"ainode": ["AINODE", "127.0.0.1", node_port]},
            "DicomCheckCalledAet": False, "StableAge": 1,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([require("Orthanc"), str(self.folder / "orthanc.json")], env=DCMTK_ENV,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 60, lambda: f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
        return self

    def _up(self) -> bool:
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read() or b"null")

    def modalities_in_study(self, study_uid: str) -> dict[str, int]:
        """Modality → number of instances, for every series of the study Orthanc holds."""
        found = self.post("/tools/find", json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
                          .encode(), "application/json")
        if not found:
            return {}
        counts: dict[str, int] = {}
        for series_id in self.get(f"/studies/{found[0]}")["Series"]:  # type: ignore[index]
            series = self.get(f"/series/{series_id}")
            modality = series["MainDicomTags"].get("Modality", "?")  # type: ignore[index]
            counts[modality] = counts.get(modality, 0) + len(series["Instances"])  # type: ignore[index]
        return counts

    def upload(self, paths: list[Path], study_uid: str) -> str:
        """Store files in Orthanc through REST; returns Orthanc's ID of the study."""
        for path in paths:
            self.post("/instances", path.read_bytes())
        return str(self.post("/tools/lookup", study_uid.encode(), "text/plain")[0]["ID"])  # type: ignore[index]

    def wait_for_results(self, study_uid: str, node: "NodeProcess") -> None:
        wait_for(lambda: self.modalities_in_study(study_uid).get("SR"), 240,
                 lambda: f"no results in Orthanc: {self.modalities_in_study(study_uid)}\n{node.log_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.process is not None:
            self.log.close()
