"""What a training run reads, gathered and checked before the first step: the real NIfTI cases, the
phantoms, the validation cases. Everything that can be wrong with the data is refused here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from training.cases import PreparedCase, phantom_plan, prepare_phantoms, prepare_real
from training.nifti import CasePair, DatasetError, check_cases
from training.phantom import REGIONS
from worker.models.spec import UNetSpec

TRAINING_REGIONS = {"chest": 0.3, "upper-abdomen": 0.15, "abdomen": 0.15, "pelvis": 0.12, "head": 0.13,
                    "chest-abdomen-pelvis": 0.15}
VALIDATION_REGIONS = ("chest", "abdomen", "head", "pelvis", "upper-abdomen", "chest-abdomen-pelvis")
VALIDATION_SEED_BASE = 800_000_000  # validation phantoms, apart from training and evaluation seeds


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ainode" / "training"


def parse_regions(text: str) -> dict[str, float]:
    """``chest=0.3,abdomen=0.2`` → shares; every name must be a phantom region."""
    shares: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, share = item.partition("=")
        if name not in REGIONS:
            raise DatasetError(f"phantom region {name!r} is not one of {', '.join(REGIONS)}")
        try:
            shares[name] = float(share or 1)
        except ValueError:
            raise DatasetError(f"phantom region {name!r}: share {share!r} is not a number")
    if not shares or sum(shares.values()) <= 0:
        raise DatasetError(f"no phantom region with a positive share in {text!r}")
    return shares


@dataclass(frozen=True)
class TrainingInputs:
    pairs: list[CasePair]
    real: list[PreparedCase]
    phantoms: list[PreparedCase]
    validation: list[PreparedCase]


def gather(spec: UNetSpec, images: Path | None, labels: Path | None, phantoms: int, seed: int,
           regions: dict[str, float] | None = None, cache: Path | None = None, validation_phantoms: int = 4,
           validation_images: Path | None = None, validation_labels: Path | None = None) -> TrainingInputs:
    """Check every case first (raising ``DatasetError`` naming the case), then prepare them all."""
    if (images is None) != (labels is None):
        raise DatasetError("give both --images and --labels, or neither")
    if (validation_images is None) != (validation_labels is None):
        raise DatasetError("give both --validation-images and --validation-labels, or neither")
    pairs = check_cases(images, labels, spec) if images and labels else []
    validation_pairs = check_cases(validation_images, validation_labels, spec) \
        if validation_images and validation_labels else []
    if not pairs and phantoms <= 0:
        raise DatasetError("nothing to train on: give --images and --labels, or --phantoms above 0")
    real = prepare_real(pairs, spec, cache)
    seeds, names = phantom_plan(phantoms, seed, regions or TRAINING_REGIONS)
    generated = prepare_phantoms(seeds, names, spec, cache)
    checks = [VALIDATION_REGIONS[n % len(VALIDATION_REGIONS)] for n in range(validation_phantoms)]
    validation = prepare_real(validation_pairs, spec, cache) + prepare_phantoms(
        [VALIDATION_SEED_BASE + n for n in range(validation_phantoms)], checks, spec, cache)
    return TrainingInputs(pairs, real, generated, validation)
