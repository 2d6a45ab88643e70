"""docker/compose.yaml started for real: its three images built from this repository (on a Debian base made
with debootstrap, since no image registry is reachable here), `compose up`, a phantom study sent into
Orthanc and from Orthanc to ainode, the SEG and SR found back in the study through Orthanc's REST API, OHIF's
page and its DICOMweb proxy answering, and `compose down -v` leaving nothing behind. Before `up`, cheap
checks on the built images: torch in the ainode image is its CPU build, a build for another torch than the
wheelhouse holds stops naming both, and an environment that makes ainode's configuration invalid stops the
service's own command at start (exit code 2, the key named).

The engine is one in this test's own network namespace: as root, a private dockerd (its own data root,
exec root and socket; no default bridge and no iptables rules, so it touches neither a site engine nor the
host's firewall). Published ports live in the namespace of the engine that publishes them, and `make test`
runs the suite in a loopback-only namespace (tests/isolated), where a host engine's ports cannot be reached.
The private engine keeps its images in ~/.cache/ainode-tests/docker: `make images` builds them there
before the namespace (apt-get, PyPI and npm are reached then); in here the builds are cache hits, or
rebuild only ainode's own layers, which need no network. Without root, an engine that answers at DOCKER_HOST
or /var/run/docker.sock is used instead; with neither, the test skips and says why."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Orthanc, phantom_series, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a build with nothing cached takes ~6 min

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ARTIFACTS = ROOT / "test-artifacts"
CACHE = Path.home() / ".cache" / "ainode-tests"
DATA_ROOT = CACHE / "docker"  # the private engine's images, kept between runs
RUN = Path("/run/ainode-tests-docker")  # its exec root, socket and pid file
SOCKET = RUN / "docker.sock"
LOCAL_BASE = "ainode-base:bookworm"
PROJECT = "ainodetest"


def answers(host: str, cli: str = "docker") -> bool:
    result = subprocess.run([cli, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            env={**os.environ, "DOCKER_HOST": host}, timeout=30)
    return result.returncode == 0


def engine_pid(path: Path) -> int | None:
    """The process behind a Unix socket (its peer credentials), to tell which network namespace it is in."""
    with socket.socket(socket.AF_UNIX) as peer:
        try:
            peer.connect(str(path))
        except OSError:
            return None
        return int(struct.unpack("3i", peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])


def in_this_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except PermissionError:  # another user's daemon: this user cannot have left the host's namespace
        return True


class Engine:
    """A Docker engine whose published ports are on this namespace's loopback; stops it if it started it."""

    def __init__(self, host: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.host = host
        self.process = process
        self.cli = build_cli()
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
        self.compose = compose_command(self.cli, self.env)

    def docker(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([self.cli, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-3000:]}"
        return result.stdout

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=120)
        for line in Path("/proc/self/mounts").read_text().splitlines()[::-1]:  # the netns file it leaves
            if line.split()[1].startswith(f"{RUN}/"):
                subprocess.run(["umount", line.split()[1]], check=False)
        shutil.rmtree(RUN, ignore_errors=True)


def build_cli() -> str:
    """A docker CLI that builds with BuildKit (which reads docker/Dockerfile.dockerignore): one with buildx,
    or one older than 23 (DOCKER_BUILDKIT=1 without buildx)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        cli = Path(folder) / "docker"
        if not cli.is_file():
            continue
        version = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
        if version and (int(version.split(".")[0]) < 23
                        or subprocess.run([cli, "buildx", "version"], capture_output=True).returncode == 0):
            return str(cli)
    pytest.skip("no docker CLI that builds with BuildKit (one with buildx, or Debian's docker.io)")


def compose_command(cli: str, env: dict[str, str]) -> list[str]:
    """The compose plugin where present, else Debian's docker-compose (v1, which does the same here)."""
    if subprocess.run([cli, "compose", "version"], capture_output=True, env=env).returncode == 0:
        return [cli, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")


def start_engine() -> Engine:
    """The private engine (started here as root), or the engine that answers, or a skip saying why not."""
    if SOCKET.exists() and (pid := engine_pid(SOCKET)) is not None:
        if not in_this_namespace(pid):
            pytest.fail(f"the private engine of an earlier run (pid {pid}) runs in another network namespace: "
                        "stop it")
        return Engine(f"unix://{SOCKET}")
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if os.geteuid() == 0 and dockerd:
        RUN.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        log = open(RUN / "dockerd.log", "wb")
        process = subprocess.Popen(
            [dockerd, "--data-root", str(DATA_ROOT), "--exec-root", str(RUN / "exec"), "--pidfile",
             str(RUN / "dockerd.pid"), "--host", f"unix://{SOCKET}", "--bridge=none", "--iptables=false",
             "--ip-forward=false", "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        engine = Engine(f"unix://{SOCKET}", process)
        try:
            wait_for(lambda: process.poll() is not None or answers(engine.host, engine.cli), 120,
                     "dockerd did not answer")
        except TimeoutError:
            engine.stop()
            raise
        if process.poll() is not None:
            shutil.rmtree(RUN, ignore_errors=True)
            pytest.skip(f"dockerd cannot start here: {(RUN / 'dockerd.log').read_text(errors='replace')[-1500:]}")
        return engine
    for host in filter(None, (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock")):
        if shutil.which("docker") and answers(host):
            return Engine(host)
    why = "this user is not root (who starts a private dockerd)" if dockerd else "dockerd is not installed (docker.io)"
    pytest.skip(f"no Docker engine: {why}, and none answers at DOCKER_HOST or /var/run/docker.sock")


def kept_wheelhouse() -> Path:
    """Where a copy of the wheelhouse made for this pyproject.toml is kept: a fresh clone (CI's) takes it
    and does not ask PyPI again."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (DOCKER / "wheelhouse.sh").read_bytes())
    return CACHE / f"wheelhouse-{key.hexdigest()[:16]}"


def images() -> None:
    """`make images`: the images built before the tests' network namespace, or the reason they cannot be."""
    try:
        build_images()
    except pytest.skip.Exception as reason:
        print(f"the compose images are not built: {reason}")


def build_images(engine: Engine | None = None) -> dict[str, float]:
    """The wheelhouse, the OHIF package, the base image and the compose file's three images, each as its
    compose definition says; seconds per step. `make images` calls this before the tests' namespace."""
    own = engine is None
    engine = engine or start_engine()
    timings: dict[str, float] = {}

    def step(name: str, command: list[str]) -> None:
        began = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, env=engine.env)
        assert result.returncode == 0, f"{name}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        timings[name] = round(time.monotonic() - began, 1)

    try:
        base = os.environ.get("AINODE_BASE_IMAGE") or LOCAL_BASE
        services = yaml.safe_load(subprocess.run(
            [*engine.compose, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, check=True,
            env={**engine.env, "AINODE_BASE_IMAGE": base}).stdout)["services"]
        wheelhouse, kept = DOCKER / "wheelhouse", kept_wheelhouse()
        made = (wheelhouse / "requirements.txt").stat().st_mtime if (wheelhouse / "requirements.txt").exists() else 0
        stale = made < (ROOT / "pyproject.toml").stat().st_mtime and not (kept / "requirements.txt").exists()
        missing = [image for image in (base, *(s["image"] for s in services.values()))
                   if subprocess.run([engine.cli, "image", "inspect", image], capture_output=True,
                                     env=engine.env).returncode != 0]
        if (stale or missing) and not Path("/proc/net/route").read_text().splitlines()[1:]:
            pytest.fail(f"not built: {['wheelhouse'] * stale + missing}, and this network namespace reaches nothing "
                        "to build them from (apt-get, PyPI): `make images` builds them before tests/isolated")
        if stale:
            step("wheelhouse", [str(DOCKER / "wheelhouse.sh")])
            for old in CACHE.glob("wheelhouse-*"):
                shutil.rmtree(old)
            shutil.copytree(wheelhouse, kept)
        elif made < (ROOT / "pyproject.toml").stat().st_mtime:
            shutil.rmtree(wheelhouse, ignore_errors=True)
            shutil.copytree(kept, wheelhouse)
        step("ohif package", [str(DOCKER / "ohif" / "fetch.sh")])
        if base == LOCAL_BASE:
            step("base image", [str(DOCKER / "build-base.sh"), LOCAL_BASE])
        for name, service in services.items():
            build = service["build"]
            context = Path(build["context"])
            arguments = [f"--build-arg={key}={value}" for key, value in build.get("args", {}).items()]
            step(f"{name} image", [engine.cli, "build", "--network", build.get("network", "default"), "-f",
                                   str(context / build.get("dockerfile", "Dockerfile")), *arguments,
                                   "-t", service["image"], str(context)])
        engine.docker("image", "prune", "--force")  # the images earlier builds left untagged
        engine.docker("builder", "prune", "--force", "--keep-storage", "4GB")  # what this build used stays
    finally:
        if own:
            engine.stop()
    print("built in seconds:", json.dumps(timings))
    return timings


@pytest.fixture()
def engine() -> Iterator[Engine]:
    running = start_engine()
    try:
        yield running
    finally:
        running.stop()
    if running.process is not None:
        assert running.process.poll() is not None and not SOCKET.exists()


class PublishedOrthanc(Orthanc):
    """The compose file's Orthanc, through the port it publishes on this namespace's loopback."""

    def __init__(self, port: int) -> None:  # not a process of this test's: nothing of Orthanc.__init__
        self.http = port
        self.process = None


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def test_compose_runs_a_study_from_orthanc_through_ainode_and_back(engine: Engine, tmp_path: Path) -> None:
    figures: dict[str, object] = {"build seconds": build_images(engine)}
    base = os.environ.get("AINODE_BASE_IMAGE") or LOCAL_BASE
    compose = [*engine.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT]
    password = tmp_path / "status-password"  # the status page's, as a site makes it (docker/README.md)
    password.write_text(secrets.token_urlsafe(18) + "\n")
    password.chmod(0o644)
    engine.env["STATUS_PASSWORD_FILE"] = str(password)
    # the image holds torch's CPU build (PyPI's torch is the CUDA one, several GB more)
    cuda = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/ainode/bin/python", "ainode",
                         "-c", "import torch; print(torch.version.cuda)", timeout=300)
    assert cuda.strip() == "None", cuda
    # an image asked for another build of torch than the wheelhouse holds stops, naming both
    network = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["ainode"]["build"]["network"]  # its cache
    other = subprocess.run([engine.cli, "build", "--network", network, "--target", "packages", "-f",
                            str(DOCKER / "Dockerfile"), f"--build-arg=BASE_IMAGE={base}", "--build-arg=TORCH=cu126",
                            str(ROOT)], capture_output=True, text=True, env=engine.env, timeout=300)
    assert other.returncode != 0 and "torch==2.13.0+cpu, not torch's cu126 build" in other.stderr, other.stderr[-2000:]
    try:
        # an environment that makes the configuration invalid stops the service's own command at start,
        # with the exit code of a refused configuration and the key named
        refused = subprocess.run([*compose, "run", "--rm", "-T", "--no-deps", "-e", "AINODE_NODE__PORT=-1", "ainode"],
                                 capture_output=True, text=True, env=engine.env, timeout=300)
        assert refused.returncode == 2 and "node.port" in refused.stdout + refused.stderr, \
            (refused.returncode, refused.stdout[-2000:], refused.stderr[-2000:])
        up = time.monotonic()
        subprocess.run([*compose, "up", "--detach", "--no-build"], check=True, env=engine.env, capture_output=True,
                       timeout=300)
        orthanc = PublishedOrthanc(8042)

        def logs() -> str:
            return subprocess.run([*compose, "logs", "--no-color", "--tail", "60"], capture_output=True, text=True,
                                  env=engine.env).stdout

        def echo() -> bool:  # Orthanc reaches ainode by its service name over the compose network
            try:
                orthanc.post("/modalities/AINODE/echo", b"{}", "application/json")
                return True
            except OSError:
                return False

        wait_for(echo, 180, lambda: f"Orthanc does not reach ainode: {logs()}", interval=1.0)
        figures["up seconds"] = round(time.monotonic() - up, 1)

        series = phantom_series(tmp_path / "series", seed=71, lesions=(2, 2), matrix=192, slice_thickness=3.0)
        study_uid = series.identity.study_instance_uid
        sent = time.monotonic()
        study_id = orthanc.upload(series.paths, study_uid)
        orthanc.post("/modalities/AINODE/store", study_id.encode(), "text/plain")
        found = wait_for(lambda: {"SEG", "SR"} <= set(counts := orthanc.modalities_in_study(study_uid)) and counts,
                         300, lambda: f"no SEG and SR in Orthanc: {orthanc.modalities_in_study(study_uid)}\n{logs()}",
                         interval=1.0)
        figures["round trip seconds"] = round(time.monotonic() - sent, 1)
        assert found == {"CT": len(series.paths), "SEG": 1, "SR": 1}, found

        status, page = http_get("http://127.0.0.1:3000/")
        assert status == 200 and b"<div id=\"root\"" in page, page[:500]
        status, config = http_get("http://127.0.0.1:3000/app-config.js")
        assert status == 200 and b"Orthanc beside ainode" in config
        # OHIF's nginx proxies Orthanc's DICOMweb by the service name: the study and its SEG through it
        status, body = http_get(f"http://127.0.0.1:3000/dicom-web/studies/{study_uid}/series")
        assert status == 200, body[:500]
        assert {s["00080060"]["Value"][0] for s in json.loads(body)} == {"CT", "SEG", "SR"}
        assert http_get("http://127.0.0.1:8081/healthz")[0] == 200  # ainode's status page, published
    finally:
        down = time.monotonic()
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], env=engine.env, capture_output=True,
                       timeout=300)
        figures["down seconds"] = round(time.monotonic() - down, 1)
    label = f"label=com.docker.compose.project={PROJECT}"
    assert engine.docker("ps", "--all", "--quiet", "--filter", label) == ""
    assert engine.docker("volume", "ls", "--quiet", "--filter", label) == ""
    assert engine.docker("network", "ls", "--quiet", "--filter", label) == ""
    assert all(http_get(f"http://127.0.0.1:{port}/")[0] == 0 for port in (8042, 3000, 8081))
    figures["image megabytes"] = {image: round(int(engine.docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6)
                                  for image in ("ainode", "ainode-orthanc", "ainode-ohif", LOCAL_BASE)
                                  if image != LOCAL_BASE or "AINODE_BASE_IMAGE" not in os.environ}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "compose-figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
