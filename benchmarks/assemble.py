"""Volume assembly, whole process, side by side with dcm2niix (PyPI) on the same files in the same run.

Each tool runs as its own process (start-up and imports included), medians of interleaved rounds, with
the peak memory (max RSS) of each process. The wall times include a small launcher process for both.
Also measured in the same rounds: a process that only starts Python and imports what assembly needs
(the floor of any whole-process figure), and the assembly alone, as a running worker pays it per job.

    .venv/bin/pip install dcm2niix
    .venv/bin/python benchmarks/assemble.py [--slices 300] [--rounds 3]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import arguments, ct_series, timed, tool

ASSEMBLE = """
import sys, time
from pathlib import Path
start = time.perf_counter()
from worker.assembly.series import assemble
imported = time.perf_counter()
volume = assemble(sorted(Path(sys.argv[1]).glob("*.dcm")))
print(f"{imported - start:.3f} {time.perf_counter() - imported:.3f} {volume.image.GetSize()}")
"""


def main() -> None:
    args = arguments(__doc__)
    dcm2niix = tool("dcm2niix")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = work / "series"
        ct_series(series, args.slices)
        print(f"series: {args.slices} CT instances of 512x512; {args.rounds} interleaved rounds, whole processes")
        times: dict[str, list[float]] = {"dcm2niix": [], "ainode assemble": [], "ainode imports only": []}
        peaks: dict[str, float] = {}
        detail = ""
        assembling: list[float] = []
        for n in range(args.rounds):
            out = work / f"nii{n}"
            out.mkdir()
            seconds, peak, _ = timed([dcm2niix, "-z", "n", "-b", "n", "-o", str(out), "-f", "vol", str(series)])
            times["dcm2niix"].append(seconds)
            peaks["dcm2niix"] = peak
            seconds, peak, detail = timed([sys.executable, "-c", ASSEMBLE, str(series)])
            times["ainode assemble"].append(seconds)
            peaks["ainode assemble"] = peak
            assembling.append(float(detail.split()[1]))
            seconds, peak, _ = timed([sys.executable, "-c", "import worker.assembly.series"])
            times["ainode imports only"].append(seconds)
            peaks["ainode imports only"] = peak
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"{name:16s} {seconds:6.2f} s  peak {peaks[name]:5.0f} MB  "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        size = detail.split(" ", 2)[2].strip()
        in_worker = statistics.median(assembling)
        print(f"ainode assemble: {in_worker:.2f} s assembling {size} once imported (as in a running worker)")
        print(f"ratio ainode / dcm2niix, whole process: {medians['ainode assemble'] / medians['dcm2niix']:.2f}x "
              f"the time (starting Python and importing numpy, SimpleITK and pydicom alone: "
              f"{medians['ainode imports only'] / medians['dcm2niix']:.2f}x)")
        print(f"ratio ainode / dcm2niix, assembly in a running worker: {in_worker / medians['dcm2niix']:.2f}x")


if __name__ == "__main__":
    main()
