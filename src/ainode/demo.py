"""``ainode demo``: the whole loop on one machine, with a stand-in PACS.

Starts a DICOM SCP that plays the PACS, runs ``ainode serve`` as a subprocess on free loopback ports,
sends a generated phantom chest CT (100+ slices), waits for the SEG and SR to come back, then prints
the job table, the Dice of the returned SEG against the phantom's truth, and writes an overlay PNG.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage, Verification
from rich.console import Console

from worker.metrics import dice
from worker.phantom import LABEL_LESION, LABEL_LUNG, StudyIdentity, make_case, write_series

SENDER_AE = "AINODE-DEMO"
PACS_AE = "DEMO-PACS"
LABELS = {"Lung": LABEL_LUNG, "Lesion": LABEL_LESION}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, message: str | Callable[[], str],
             interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` with ``message`` otherwise.

    ``message`` may be a callable, so a failing wait can report the state it found (a log, a job row).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:.0f} s)")
        time.sleep(interval)


class StandInPacs:
    """A minimal storage SCP that keeps whatever SEG and SR it receives, as a PACS would."""

    def __init__(self, folder: Path, port: int, ae_title: str = PACS_AE) -> None:
        self.folder = folder
        self.port = port
        self.received: list[Path] = []
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        self._server = ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Event) -> int:
        path = self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        with self._lock:
            self.received.append(path)
        return 0x0000

    def modalities(self) -> dict[str, Path]:
        with self._lock:
            paths = list(self.received)
        return {str(dcmread(p, stop_before_pixels=True).Modality): p for p in paths}

    def stop(self) -> None:
        self._server.shutdown()


def send_files(paths: list[Path], port: int, called: str = "AINODE", calling: str = SENDER_AE) -> list[int]:
    """C-STORE files with pynetdicom (TCP_NODELAY) and return the statuses."""
    ae = AE(ae_title=calling)
    contexts = set()
    for path in paths:  # each file goes as it is stored: propose exactly its SOP class and transfer syntax
        meta = dcmread(path, stop_before_pixels=True).file_meta
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)

    def no_delay(event: Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        raise ConnectionError(f"{called} on port {port} refused the association")
    statuses = []
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def echo(port: int, called: str = "AINODE", calling: str = SENDER_AE) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def seg_labels(seg_path: Path, source_uids: list[str], names: dict[str, int]) -> np.ndarray:
    """The SEG as a label array over the given source instances, label values taken from ``names``."""
    seg = hd.seg.segread(seg_path)
    rows, cols = int(seg.Rows), int(seg.Columns)
    out = np.zeros((len(source_uids), rows, cols), dtype=np.uint8)
    for description in seg.SegmentSequence:
        value = names.get(str(description.SegmentLabel))
        if value is None:
            continue
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_uids, segment_numbers=[int(description.SegmentNumber)],
            assert_missing_frames_are_empty=True,
        )
        out[masks[..., 0] > 0] = value
    return out


def overlay_png(hu: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], path: Path) -> int:
    """Image beside image + SEG overlay, on the slice with the most lesion; returns that slice index."""
    lesion_area = (labels == LABEL_LESION).sum(axis=(1, 2))
    k = int(np.argmax(lesion_area)) if lesion_area.any() else labels.shape[0] // 2
    gray = (np.clip((hu[k] + 1000.0) / 1400.0, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    blended = rgb.copy()
    for value, color in colors.items():
        mask = labels[k] == value
        blended[mask] = 0.5 * blended[mask] + 0.5 * np.array(color, dtype=np.float32)
    picture = np.concatenate([rgb, blended], axis=1).astype(np.uint8)
    Image.fromarray(picture).resize((picture.shape[1] * 2, picture.shape[0] * 2), Image.Resampling.NEAREST).save(path)
    return k


@dataclass(frozen=True)
class DemoConfig:
    node_port: int
    pacs_port: int
    root: Path

    def toml(self) -> str:
        return f"""# written by `ainode demo`
[node]
ae_title = "AINODE"
port = {self.node_port}
bind_address = "127.0.0.1"
allowed_calling_ae_titles = ["{SENDER_AE}"]

[storage]
root = "{self.root / 'node'}"

[queue]
settle_seconds = 1.0
lease_seconds = 30.0

[worker]
count = 1

[destinations.pacs]
host = "127.0.0.1"
port = {self.pacs_port}
ae_title = "{PACS_AE}"

[delivery]
result_destinations = ["pacs"]
"""


def run_demo(out: Path, seed: int = 7, timeout: float = 110.0, console: Console | None = None) -> int:
    from ainode.config import load_settings
    from ainode.views import jobs_table
    from db import monitor
    from db.engine import Database
    from worker.modelspec import load_spec

    console = console or Console()
    start = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "pacs").glob("*.dcm"):
        stale.unlink()
    config = DemoConfig(free_port(), free_port(), out)
    config_path = out / "ainode-demo.toml"
    config_path.write_text(config.toml())
    pacs = StandInPacs(out / "pacs", config.pacs_port)
    log_file = open(out / "node.log", "ab")
    node = subprocess.Popen([sys.executable, "-m", "ainode.cli", "serve", "--config", str(config_path)],
                            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        console.print(f"[bold]1.[/] stand-in PACS {PACS_AE} on 127.0.0.1:{config.pacs_port}; "
                      f"ainode serve on 127.0.0.1:{config.node_port} (log: {out / 'node.log'})")
        case = make_case(seed, matrix=256, slice_thickness=2.5, orientation="HFS", min_slices=100)
        identity = StudyIdentity.from_seed(seed)
        series_dir = out / "study"
        for stale in series_dir.glob("*.dcm"):
            stale.unlink()
        paths = write_series(case.hu, case.grid, identity, series_dir, case.patient_position)
        console.print(f"[bold]2.[/] generated phantom chest CT: {len(paths)} slices of "
                      f"{case.grid.size[0]}x{case.grid.size[1]}, {len(case.phantom.lesions)} lesion(s)")
        wait_for(lambda: node.poll() is not None or echo(config.node_port), 60, "ainode did not answer C-ECHO")
        if node.poll() is not None:
            console.print(f"[red]ainode serve exited with {node.returncode}; see {out / 'node.log'}")
            return 1
        sent = time.monotonic()
        statuses = send_files(paths, config.node_port)
        failed = [s for s in statuses if s != 0]
        console.print(f"[bold]3.[/] sent {len(paths)} instances in {time.monotonic() - sent:.1f} s "
                      f"({len(failed)} failures)")
        wait_for(lambda: {"SEG", "SR"} <= set(pacs.modalities()), timeout,
                 "the SEG and SR did not arrive at the stand-in PACS")
        received = pacs.modalities()
        console.print(f"[bold]4.[/] SEG and SR arrived {time.monotonic() - sent:.1f} s after sending started")
        settings = load_settings(config_path)
        db = Database(settings.database_url)
        console.print(jobs_table(monitor.jobs(db, limit=5)))
        source_uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
        returned = seg_labels(received["SEG"], source_uids, LABELS)
        scores = {name: dice(returned == value, case.labels == value) for name, value in LABELS.items()}
        console.print("[bold]5.[/] Dice of the returned SEG against the phantom truth: "
                      + ", ".join(f"{name} {score:.3f}" for name, score in scores.items()))
        spec = load_spec(settings.worker.model)
        colors = {label.value: label.color for label in spec.labels}
        k = overlay_png(case.hu, returned, colors, out / "overlay.png")
        console.print(f"[bold]6.[/] overlay of slice {k + 1}: {out / 'overlay.png'}; SEG {received['SEG'].name}, "
                      f"SR {received['SR'].name} in {out / 'pacs'}")
        console.print(f"demo finished in {time.monotonic() - start:.1f} s")
        db.dispose()
        return 0
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/]; node log: {out / 'node.log'}")
        return 1
    finally:
        node.terminate()
        try:
            node.wait(timeout=40)
        except subprocess.TimeoutExpired:
            node.kill()
        pacs.stop()
        log_file.close()
