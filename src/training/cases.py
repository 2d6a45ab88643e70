"""Training and evaluation cases on the model's grid: real NIfTI cases and generated phantoms, preprocessed
exactly as inference preprocesses (``worker.models.grid``), and cached on disk so that every fold of a
cross-validation, and a resumed run, reuses them instead of computing them again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage

from db.storage import write_atomic
from training.nifti import CasePair, DatasetError, read_case
from training.phantom import PhantomCase, make_case
from worker.models.grid import image_from_array, labels_to_model_space, to_model_space
from worker.models.spec import UNetSpec

DARK = 0.3  # windowed intensity below which a voxel looks like air (-580 HU in the demo model's window)
PHANTOM_VERSION = 4  # bump when the phantom generator changes, so cached phantoms are made again


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )


@dataclass(frozen=True)
class PreparedCase:
    """One case on the model grid: normalised intensities, (z, y, x) or (channels, z, y, x) (float16 to
    halve the memory), and labels (z, y, x)."""

    name: str
    kind: str  # "real" or the phantom's region
    image: np.ndarray
    labels: np.ndarray

    @property
    def foreground(self) -> bool:
        return bool(self.labelled.size)

    @cached_property
    def labelled(self) -> np.ndarray:
        """Flat indices of the labelled voxels, where focused patches are centred."""
        return np.flatnonzero(self.labels)

    @cached_property
    def lookalikes(self) -> np.ndarray:
        """Flat indices of unlabelled voxels as dark as air inside the body (trachea, bowel gas, sinuses,
        the table's foam): where a model learns what is not lung. The body is what tissue encloses, slice by
        slice, so the air around the patient is left out."""
        if self.image.ndim != 3 or self.kind.startswith("mr-"):
            return np.zeros(0, dtype=np.int64)  # "as dark as air" is a CT window's notion
        dark = self.image < DARK
        inside = np.zeros_like(dark)
        for k in range(dark.shape[0]):
            inside[k] = ndimage.binary_fill_holes(~dark[k])
        return np.flatnonzero(dark & inside & (self.labels == 0))


def phantom_images(case: PhantomCase) -> tuple[sitk.Image, sitk.Image]:
    """A phantom's image and truth as SimpleITK images on its scan grid."""
    grid = case.grid
    return (image_from_array(case.hu, grid.spacing, grid.origin, grid.direction),
            image_from_array(case.labels, grid.spacing, grid.origin, grid.direction))


def case_images(seed: int, matrix: int = 256, region: str = "chest") -> tuple[PhantomCase, sitk.Image, sitk.Image]:
    """A phantom of ``region`` with its image and truth: what tests and benchmarks segment."""
    case = make_case(seed, region=region, matrix=matrix)
    return (case, *phantom_images(case))


def _prepared(name: str, kind: str, image: sitk.Image, labels: sitk.Image, spec: UNetSpec) -> PreparedCase:
    x, grid = to_model_space(image, spec.preprocess)
    return PreparedCase(name, kind, x.astype(np.float16), labels_to_model_space(labels, grid))


def _key(spec: UNetSpec, *parts: object) -> str:
    text = json.dumps([spec.preprocess.model_dump(), *[str(p) for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(cache: Path | None, name: str, key: str) -> tuple[Path | None, PreparedCase | None]:
    if cache is None:
        return None, None
    path = cache / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path) as stored:
            return path, PreparedCase(name, str(stored["kind"]), stored["image"], stored["labels"])
    return path, None


def _store(path: Path | None, case: PreparedCase) -> None:
    if path is not None:
        write_atomic(path, lambda fh: np.savez(fh, kind=case.kind, image=case.image, labels=case.labels))


def prepare_real(pairs: list[CasePair], spec: UNetSpec, cache: Path | None = None) -> list[PreparedCase]:
    """Checked NIfTI cases on the model grid."""
    out = []
    with progress() as bar:
        task = bar.add_task("real cases", total=len(pairs), info="")
        for pair in pairs:
            files = [*pair.images, pair.label]
            path, case = _cached(cache, pair.name, _key(spec, spec.channels, *[
                part for f in files for part in (f.resolve(), f.stat().st_size, f.stat().st_mtime)]))
            if case is None:
                case = _prepared(pair.name, "real", *read_case(pair, spec), spec)
                _store(path, case)
            out.append(case)
            bar.update(task, advance=1, info=f"{pair.name} {case.image.shape}")
    return out


def prepare_phantoms(seeds: list[int], regions: list[str], spec: UNetSpec, cache: Path | None = None,
                     matrix: int = 160) -> list[PreparedCase]:
    """Phantom ``seeds[n]`` of region ``regions[n]``, on the model grid: CT, or for a model of several
    channels MR phantoms (``training.mr``) of those contrasts."""
    if spec.channels:
        return _mr_phantoms(seeds, regions, spec, cache, matrix)
    out = []
    with progress() as bar:
        task = bar.add_task("phantoms", total=len(seeds), info="")
        for seed, region in zip(seeds, regions):
            name = f"phantom-{region}-{seed}"
            path, case = _cached(cache, name, _key(spec, PHANTOM_VERSION, seed, region, matrix))
            if case is None:
                phantom = make_case(seed, region=region, matrix=matrix)
                case = _prepared(name, region, *phantom_images(phantom), spec)
                _store(path, case)
            out.append(case)
            bar.update(task, advance=1, info=f"{name} {case.image.shape}")
    return out


def _mr_phantoms(seeds: list[int], regions: list[str], spec: UNetSpec, cache: Path | None,
                 matrix: int) -> list[PreparedCase]:
    from training.mr import CONTRASTS, make_mr_case, mr_images

    unknown = [c for c in spec.channels if c not in CONTRASTS]
    if unknown:
        raise DatasetError(f"model {spec.name}: no MR phantom has channel {unknown[0]!r} (they have "
                           f"{', '.join(CONTRASTS)}); train with --phantoms 0")
    out = []
    for seed, region in zip(seeds, regions):
        name = f"mr-phantom-{region}-{seed}"
        path, case = _cached(cache, name, _key(spec, PHANTOM_VERSION, "mr", spec.channels, seed, region, matrix))
        if case is None:
            channels, labels = mr_images(make_mr_case(seed, spec.channels, region, matrix))
            case = _prepared(name, f"mr-{region}", sitk.Compose(*channels), labels, spec)
            _store(path, case)
        out.append(case)
    return out


def phantom_plan(count: int, seed: int, regions: dict[str, float]) -> tuple[list[int], list[str]]:
    """Seeds and regions of ``count`` phantoms, the regions in the given proportions (round robin, so
    that the first few phantoms already cover every region)."""
    names = [name for name, share in regions.items() if share > 0]
    weights = np.array([regions[n] for n in names], dtype=np.float64)
    counts = np.floor(weights / weights.sum() * count).astype(int)
    for i in np.argsort(-(weights / weights.sum() * count - counts))[: count - int(counts.sum())]:
        counts[i] += 1
    order: list[str] = []
    while len(order) < count:
        for n, name in enumerate(names):
            if order.count(name) < counts[n]:
                order.append(name)
    return [seed * 100_000 + n for n in range(count)], order
