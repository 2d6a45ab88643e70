"""What the benchmarks share: a synthetic 512x512 CT series (noise, not anatomy: only sizes and formats
matter), their command-line options, and timing one tool as a whole process."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.dicom import StudyIdentity, write_series
from training.phantom import Grid


def ct_series(folder: Path, slices: int = 300) -> list[Path]:
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, size=(slices, 512, 512)).astype(np.float32)
    grid = Grid((512, 512, slices), (0.7, 0.7, 1.25), np.array([-180.0, -180.0, -200.0]), np.eye(3))
    return write_series(hu, grid, StudyIdentity.from_seed(424242), folder)


def arguments(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def tool(name: str) -> str:
    """A command on PATH, or beside this Python (a PyPI package's console script in the venv)."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


PEAK = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall time, peak RSS (MB) and output of one child process (measured by a fresh parent of its own)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {(result.stdout + result.stderr)[-2000:]}")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return elapsed, peak_kb / 1024, result.stdout
