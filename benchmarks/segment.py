"""Model speed and memory: one CT volume segmented by each model given, whole processes, side by side.

Each model runs in its own process (loading the model, then ``segment`` on a 512x512 CT of ``--slices``
slices at 0.7 x 0.7 x 1.25 mm, made in memory: speed does not depend on what the pixels show), medians
of interleaved rounds, with the peak memory (max RSS) of each process and the time of ``segment`` alone
(what a running worker pays per job: resampling to the model grid, sliding-window inference, the
probabilities back onto the source grid). Compare a model before and after a change in one run:

    .venv/bin/python benchmarks/segment.py --model old/model.toml --model src/worker/models/demo/model.toml
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import timed

SEGMENT = """
import sys, time
import numpy as np
import SimpleITK as sitk
import torch
torch.set_num_threads(int(sys.argv[3]))
from worker.models.runtime import segment
from worker.models.spec import load_spec
from worker.models.unet import UNetRuntime
slices = int(sys.argv[2])
hu = np.random.default_rng(0).normal(-300, 300, size=(slices, 512, 512)).astype(np.int16)
image = sitk.GetImageFromArray(hu)
image.SetSpacing((0.7, 0.7, 1.25))
start = time.perf_counter()
runtime = UNetRuntime(load_spec(sys.argv[1]), device="cpu")
loaded = time.perf_counter()
labels = segment(runtime, image)
print(f"{loaded - start:.3f} {time.perf_counter() - loaded:.3f} {labels.shape}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a model.toml; give it once per model")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"volume: 512x512x{args.slices} at 0.7x0.7x1.25 mm; {args.rounds} interleaved rounds, whole processes, "
          f"{args.threads} threads")
    wall: dict[str, list[float]] = {m: [] for m in args.model}
    inside: dict[str, list[float]] = {m: [] for m in args.model}
    peaks: dict[str, list[float]] = {m: [] for m in args.model}
    for _ in range(args.rounds):
        for model in args.model:
            seconds, peak, detail = timed([sys.executable, "-c", SEGMENT, model, str(args.slices), str(args.threads)])
            wall[model].append(seconds)
            peaks[model].append(peak)
            inside[model].append(float(detail.split()[1]))
    for model in args.model:
        print(f"{model}: whole process {statistics.median(wall[model]):6.2f} s, segment alone "
              f"{statistics.median(inside[model]):6.2f} s (rounds: {', '.join(f'{t:.2f}' for t in inside[model])}), "
              f"peak {max(peaks[model]):5.0f} MB")
    if len(args.model) == 2:
        a, b = args.model
        print(f"ratio second / first: segment {statistics.median(inside[b]) / statistics.median(inside[a]):.2f}x "
              f"the time, peak memory {max(peaks[b]) / max(peaks[a]):.2f}x")


if __name__ == "__main__":
    main()
