"""Volume assembly, whole process, side by side with dcm2niix (PyPI) on the same files in the same run.

Each tool runs as its own process (start-up and imports included), medians of interleaved rounds, with
the peak memory (max RSS) of each process. The wall times include a small launcher process for both.

    .venv/bin/pip install dcm2niix
    .venv/bin/python benchmarks/assemble.py [--slices 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from series import ct_series

ASSEMBLE = """
import sys, time
from pathlib import Path
start = time.perf_counter()
from worker.geometry import assemble
imported = time.perf_counter()
volume = assemble(sorted(Path(sys.argv[1]).glob("*.dcm")))
print(f"{imported - start:.3f} {time.perf_counter() - imported:.3f} {volume.image.GetSize()}")
"""


PEAK = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall time, peak RSS (MB) and output of one child process (measured by a fresh parent of its own)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {result.stderr[-2000:]}")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return elapsed, peak_kb / 1024, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = work / "series"
        ct_series(series, args.slices)
        print(f"series: {args.slices} CT instances of 512x512; {args.rounds} interleaved rounds, whole processes")
        times: dict[str, list[float]] = {"dcm2niix": [], "ainode assemble": []}
        peaks: dict[str, float] = {}
        detail = ""
        for n in range(args.rounds):
            out = work / f"nii{n}"
            out.mkdir()
            seconds, peak, _ = timed([dcm2niix, "-z", "n", "-b", "n", "-o", str(out), "-f", "vol", str(series)])
            times["dcm2niix"].append(seconds)
            peaks["dcm2niix"] = peak
            seconds, peak, detail = timed([sys.executable, "-c", ASSEMBLE, str(series)])
            times["ainode assemble"].append(seconds)
            peaks["ainode assemble"] = peak
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"{name:16s} {seconds:6.2f} s  peak {peaks[name]:5.0f} MB  "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        imports, work_seconds, size = detail.split(" ", 2)
        print(f"ainode assemble: {imports} s imports, {work_seconds} s assembling {size.strip()}")
        print(f"ratio ainode / dcm2niix: {medians['ainode assemble'] / medians['dcm2niix']:.2f}x the time")


if __name__ == "__main__":
    main()
