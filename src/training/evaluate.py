"""Score a model (``ainode evaluate``) on NIfTI cases or on fresh phantoms: the full inference path (model
grid and back, post-processing) scored on each case's own grid, where a SEG would be drawn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from training.cases import phantom_images, progress
from training.metrics import dice
from training.nifti import CasePair, read_case
from training.phantom import REGIONS, make_case
from training.report import overlay_png
from worker.models.postprocess import clean
from worker.models.runtime import Runtime, segment
from worker.models.spec import UNetSpec
from worker.models.unet import UNetRuntime

EVALUATION_SEED_BASE = 900_000_000  # evaluation phantoms never overlap training (seed * 100 000 + n) or validation


@dataclass(frozen=True)
class CaseScore:
    """One case: Dice per label (None where neither truth nor prediction has the label), and the volumes."""

    name: str
    kind: str
    dice: dict[str, float | None]
    truth_ml: dict[str, float]
    found_ml: dict[str, float]
    overlay: str | None = None
    fold: int | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def error_ml(self, label: str) -> float:
        return self.found_ml[label] - self.truth_ml[label]


def score_case(runtime: Runtime, name: str, kind: str, image: sitk.Image, truth: np.ndarray,
               overlays: Path | None) -> CaseScore:
    """Segment one image, clean it as the worker does, and compare it with its truth (z, y, x)."""
    spec = runtime.spec
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    labels = clean(segment(runtime, image), spec.labels, voxel_ml)
    dices: dict[str, float | None] = {}
    truth_ml, found_ml = {}, {}
    for label in spec.labels:
        found, expected = labels == label.value, truth == label.value
        dices[label.name] = dice(found, expected) if expected.any() or found.any() else None
        truth_ml[label.name] = float(expected.sum()) * voxel_ml
        found_ml[label.name] = float(found.sum()) * voxel_ml
    overlay = None
    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
        overlay_png(image, labels, truth, spec, overlays / f"{name}.png",
                    title=f"{name}: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in dices.items()))
        overlay = f"{name}.png"
    return CaseScore(name, kind, dices, truth_ml, found_ml, overlay)


def _nifti_cases(pairs: list[CasePair], spec: UNetSpec) -> Iterator[tuple[str, str, sitk.Image, np.ndarray]]:
    for pair in pairs:
        image, label = read_case(pair, spec)
        yield pair.name, "real", image, sitk.GetArrayFromImage(label)


def _phantom_cases(count: int, seed: int, regions: list[str]) -> Iterator[tuple[str, str, sitk.Image, np.ndarray]]:
    for n in range(count):
        region = regions[n % len(regions)]
        number = EVALUATION_SEED_BASE + seed * 1000 + n
        case = make_case(number, region=region, matrix=192)
        image, _ = phantom_images(case)
        yield f"phantom-{region}-{number}", region, image, case.labels


def evaluate(spec: UNetSpec, pairs: list[CasePair] | None = None, phantoms: int = 0, seed: int = 0,
             regions: list[str] | None = None, out: Path | None = None, device: str = "auto",
             runtime: Runtime | None = None) -> list[CaseScore]:
    """Scores of every NIfTI case in ``pairs`` and of ``phantoms`` fresh phantoms (cycling through
    ``regions``); overlays in ``out`` when given."""
    runtime = runtime or UNetRuntime(spec, device=device)
    regions = regions or list(REGIONS)
    scores: list[CaseScore] = []
    with progress() as bar:
        task = bar.add_task("evaluating", total=len(pairs or []) + phantoms, info="")
        for name, kind, image, truth in chain(_nifti_cases(pairs or [], spec), _phantom_cases(phantoms, seed, regions)):
            scores.append(score_case(runtime, name, kind, image, truth, out))
            shown = {k: None if v is None else round(v, 3) for k, v in scores[-1].dice.items()}
            bar.update(task, advance=1, info=f"{name}: {json.dumps(shown)}")
    return scores
