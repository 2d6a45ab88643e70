"""Receive throughput: DCMTK storescu → ainode serve, side by side with storescu → DCMTK storescp.

Prints instances per second and seconds per series for both receivers, measured in the same run with
the same files (a 512x512 CT series, 300 slices by default), medians of interleaved rounds, and the ratio.
ainode does more per instance than storescp (fsync of the file and the folder, a committed database row
before the response), so the ratio is the price of "nothing acknowledged that is not durable".

    .venv/bin/python benchmarks/receive.py [--slices 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ainode.kit import echo, free_port, wait_for
from common import ct_series

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(port: int, called: str, paths: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port),
                             *[str(p) for p in paths]], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"storescu failed: {result.stderr[-2000:]}")
    return elapsed


def storescp_round(paths: list[Path], work: Path) -> float:
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(["storescp", "-aet", "BENCH", "-od", str(out), str(port)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["echoscu", "-aec", "BENCH", "127.0.0.1", str(port)], env=ENV,
                                        capture_output=True).returncode == 0, 20, "storescp did not start")
        return send(port, "BENCH", paths)
    finally:
        process.terminate()
        process.wait()


def ainode_round(paths: list[Path], work: Path) -> float:
    root = work / "ainode"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    port = free_port()
    config = root / "bench.toml"
    config.write_text(f'[node]\nport = {port}\nallowed_calling_ae_titles = ["STORESCU", "AINODE-DEMO"]\n'
                      f'[storage]\nroot = "{root / "data"}"\n[worker]\ncount = 0\n[queue]\nsettle_seconds = 3600\n')
    process = subprocess.Popen([sys.executable, "-m", "ainode.cli", "serve", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: echo(port), 60, "ainode did not start")
        return send(port, "AINODE", paths)
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = ct_series(work / "series", args.slices)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"series: {len(paths)} instances of 512x512, {megabytes:.0f} MB; {args.rounds} interleaved rounds")
        times: dict[str, list[float]] = {"storescp (DCMTK)": [], "ainode serve": []}
        for _ in range(args.rounds):
            times["storescp (DCMTK)"].append(storescp_round(paths, work))
            times["ainode serve"].append(ainode_round(paths, work))
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"{name:18s} {seconds:6.2f} s  {len(paths) / seconds:6.1f} inst/s  {megabytes / seconds:6.1f} MB/s  "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        print(f"ratio ainode / storescp: {medians['ainode serve'] / medians['storescp (DCMTK)']:.2f}x the time")


if __name__ == "__main__":
    main()
