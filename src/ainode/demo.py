"""``ainode demo``: the whole loop on one machine, with a stand-in PACS.

Starts a DICOM SCP that plays the PACS, runs ``ainode serve`` as a subprocess on free loopback ports,
sends a generated phantom chest CT (100+ slices), waits for the SEG and SR to come back, then prints
the job table, the Dice of the returned SEG against the phantom's truth, and writes an overlay PNG.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from ainode.kit import PACS_AE, SENDER_AE, StandInPacs, echo, free_port, seg_labels, send_files, wait_for
from training.dicom import StudyIdentity, slice_uid, write_series
from training.metrics import dice
from training.phantom import LABEL_LUNG, make_case

LABELS = {"Lung": LABEL_LUNG}


def overlay_png(hu: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]], path: Path) -> int:
    """Image beside image + SEG overlay, on the slice with the most segmented area; returns that slice index."""
    area = (labels > 0).sum(axis=(1, 2))
    k = int(np.argmax(area)) if area.any() else labels.shape[0] // 2
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

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'node' / 'ainode.db'}"

    def toml(self) -> str:
        return f"""# written by `ainode demo`
[node]
ae_title = "AINODE"
port = {self.node_port}
bind_address = "127.0.0.1"
allowed_calling_ae_titles = ["{SENDER_AE}"]

[storage]
root = "{self.root / 'node'}"
minimum_free_gb = 0.5

[database]
url = "{self.database_url}"

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
    from ainode.views import jobs_table
    from db import monitor
    from db.engine import Database
    from worker.models.spec import load_spec

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
                      f"{case.grid.size[0]}x{case.grid.size[1]} ({case.region})")
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
        db = Database(config.database_url)
        console.print(jobs_table(monitor.jobs(db, limit=5)))
        db.dispose()
        returned = seg_labels(received["SEG"], [slice_uid(identity, k) for k in range(len(paths))], LABELS)
        scores = {name: dice(returned == value, case.labels == value) for name, value in LABELS.items()}
        console.print("[bold]5.[/] Dice of the returned SEG against the phantom truth: "
                      + ", ".join(f"{name} {score:.3f}" for name, score in scores.items()))
        colors = {label.value: label.color for label in load_spec().labels}
        k = overlay_png(case.hu, returned, colors, out / "overlay.png")
        console.print(f"[bold]6.[/] overlay of slice {k + 1}: {out / 'overlay.png'}; SEG {received['SEG'].name}, "
                      f"SR {received['SR'].name} in {out / 'pacs'}")
        console.print(f"demo finished in {time.monotonic() - start:.1f} s")
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
