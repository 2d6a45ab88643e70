"""Score a model on fresh phantoms (``ainode evaluate``): the full inference path (model grid and back,
post-processing), scored on the source grid, where the SEG is drawn."""

from __future__ import annotations

import json

import numpy as np

from training.cases import case_images, progress
from training.metrics import dice
from worker.models.postprocess import clean
from worker.models.runtime import segment
from worker.models.spec import UNetSpec
from worker.models.unet import UNetRuntime

EVALUATION_SEED_BASE = 1_000_000  # evaluation phantoms never overlap the training seeds


def evaluate(spec: UNetSpec, cases: int = 5, seed: int = 0, device: str = "auto",
             matrix: int = 256) -> dict[str, list[float]]:
    """Per-label Dice of the full inference path on fresh phantoms, scored on the source grid."""
    runtime = UNetRuntime(spec, device=device)
    scores: dict[str, list[float]] = {label.name: [] for label in spec.labels}
    with progress() as bar:
        task = bar.add_task("evaluating", total=cases, info="")
        for n in range(cases):
            case, image, _ = case_images(EVALUATION_SEED_BASE + seed * 1000 + n, matrix)
            labels = segment(runtime, image)
            voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
            labels = clean(labels, spec.labels, voxel_ml)
            for label in spec.labels:
                scores[label.name].append(dice(labels == label.value, case.labels == label.value))
            bar.update(task, advance=1, info=json.dumps({k: round(v[-1], 3) for k, v in scores.items()}))
    return scores
