"""The fault suite in full: kill -9 of the receiver at random points and of a worker mid-stage (50 runs
each by default), a destination down for 10 minutes, a full disk and a locked database, against the real
node and DCMTK peers. Prints runs, acknowledged, lost, duplicated, partial results, crashes and leftovers
per scenario; every column after the second must be 0.

    .venv/bin/python benchmarks/faults.py --runs 50 --down-seconds 600
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "faults")]

from harness import HEADER, database_locked, destination_down, disk_full, kill_receiver, kill_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--down-seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz", choices=["full", "ci", "none"], default="full",
                        help="hypothesis inputs per fuzz test: full 10,000, ci 1,000")
    args = parser.parse_args()
    scenarios = [
        ("kill -9 receiver", lambda root: kill_receiver(root, args.runs, args.seed)),
        ("kill -9 worker", lambda root: kill_worker(root, args.runs, args.seed)),
        ("destination down", lambda root: destination_down(root, args.down_seconds)),
        ("database locked", database_locked),
    ]
    if os.geteuid() == 0:
        scenarios.append(("disk full", disk_full))
    else:
        print("disk full: skipped (mounting a tmpfs needs root)")
    print(HEADER)
    clean = True
    for name, run in scenarios:
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            tally = run(Path(tmp))
        print(f"{tally.row(name)}   ({time.monotonic() - start:.0f} s)", flush=True)
        clean &= tally.clean
    if args.fuzz != "none":
        start = time.monotonic()
        fuzz = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                               str(TESTS / "faults" / "test_fuzz_receive.py")],
                              env={**os.environ, "FUZZ_PROFILE": args.fuzz}, capture_output=True, text=True)
        summary = [line for line in fuzz.stdout.splitlines() if "fuzz summary" in line or " passed" in line
                   or " failed" in line]
        print(f"fuzzing ({args.fuzz}): " + " | ".join(summary) + f"   ({time.monotonic() - start:.0f} s)")
        clean &= fuzz.returncode == 0
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
