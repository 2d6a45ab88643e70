"""MR phantoms: the CT phantom's body (``training.anatomy``) seen with MR contrasts, for multi-channel models.

Each tissue's HU stands for the tissue, and a contrast maps it to a signal: T1-weighted shows fat bright
and fluid dark, T2-weighted fluid bright, FLAIR fluid dark again with oedema-like soft tissue brighter,
T1 after gadolinium what enhances (the blood, the organs) bright; air, lung and cortical bone are dark in
all. So the channels carry different and complementary information, as in a real MR study. Each series
has its own grid (pixel size, slice thickness, a small shift) over the same anatomy and frame of
reference, a smooth bias field of its own and Rician noise. The truth (the lung) is on the first
contrast's grid, the grid a multi-channel model works on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from training.anatomy import random_anatomy
from training.dicom import StudyIdentity, write_series
from training.phantom import Grid, random_grid, random_pose, render
from worker.models.grid import image_from_array
from worker.results.identity import stable_uid

HU = (-1000, -900, -700, -300, -120, -80, -40, 0, 15, 40, 60, 100, 140, 300, 500, 1100)
SIGNAL: dict[str, tuple[float, ...]] = {  # at the HU above: air, lung, fat, fluid, muscle, organs, marrow, bone
    "T1": (0, .03, .05, .3, 1, 1, .7, .15, .15, .4, .45, .55, .6, .7, .1, .05),
    "T2": (0, .04, .06, .3, .8, .8, .6, 1, 1, .4, .35, .3, .35, .5, .1, .05),
    "FLAIR": (0, .03, .05, .25, .6, .6, .4, .1, .1, .5, .45, .4, .4, .45, .1, .05),
    "T1 POST GD": (0, .03, .05, .3, 1, 1, .7, .15, .15, .45, .55, .7, .9, 1, .3, .05),
}
SEQUENCES: dict[str, dict[str, object]] = {  # SeriesDescription and the acquisition's attributes
    "T1": {"SeriesDescription": "T1 AX", "ScanningSequence": "SE", "RepetitionTime": "500", "EchoTime": "10"},
    "T2": {"SeriesDescription": "T2 AX", "ScanningSequence": "SE", "RepetitionTime": "4000", "EchoTime": "100"},
    "FLAIR": {"SeriesDescription": "FLAIR AX", "ScanningSequence": ["SE", "IR"], "RepetitionTime": "9000",
              "EchoTime": "120", "InversionTime": "2500"},
    "T1 POST GD": {"SeriesDescription": "T1 POST GD", "ScanningSequence": "SE", "RepetitionTime": "500",
                   "EchoTime": "10", "ContrastBolusAgent": "GADOLINIUM"},
}
CONTRASTS = tuple(SIGNAL)
STORED_SCALE = 1000.0  # signal 1.0 is stored as 1000


@dataclass(frozen=True)
class MRCase:
    """One MR phantom study: each contrast's signal (z, y, x, stored scale) on its own grid, and the lung
    truth on the first contrast's grid."""

    contrasts: tuple[str, ...]
    images: dict[str, np.ndarray]
    grids: dict[str, Grid]
    labels: np.ndarray
    patient_position: str

    @property
    def first(self) -> Grid:
        return self.grids[self.contrasts[0]]


def _check(contrasts: tuple[str, ...]) -> None:
    unknown = [c for c in contrasts if c not in SIGNAL]
    if unknown or not contrasts or len(set(contrasts)) != len(contrasts):
        raise ValueError(f"MR phantom contrasts {list(contrasts)} must be distinct names among {list(CONTRASTS)}")


def _series_grid(first: Grid, rng: np.random.Generator) -> Grid:
    """Another series over the same anatomy: its own pixel size and slice thickness, shifted a little."""
    spacing = np.array([first.spacing[0] * rng.uniform(0.8, 1.25)] * 2
                       + [float(rng.choice([t for t in (2.0, 3.0, 4.0, 5.0) if abs(t - first.spacing[2]) > 0.1]))])
    extent = (np.array(first.size) - 1) * np.array(first.spacing) + 10.0
    size = np.ceil(extent / spacing).astype(int) + 1
    centre = first.origin + first.direction @ ((np.array(first.size) - 1) * np.array(first.spacing) / 2)
    centre = centre + rng.uniform(-4, 4, size=3)
    origin = centre - first.direction @ ((size - 1) * spacing / 2)
    return Grid((int(size[0]), int(size[1]), int(size[2])), (float(spacing[0]), float(spacing[1]), float(spacing[2])),
                origin, first.direction.copy())


def _signal(hu: np.ndarray, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """A contrast's signal from HU, with a smooth bias field and Rician noise, at the stored scale."""
    signal = np.interp(hu, HU, SIGNAL[contrast]).astype(np.float32)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in signal.shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a = rng.uniform(-0.15, 0.15, size=6)
    bias = np.exp(a[0] * x + a[1] * y + a[2] * z + a[3] * x * x + a[4] * y * y + a[5] * x * y)
    sigma = rng.uniform(0.01, 0.04)
    real = signal * bias + rng.normal(0, sigma, size=signal.shape).astype(np.float32)
    imaginary = rng.normal(0, sigma, size=signal.shape).astype(np.float32)
    return (np.sqrt(real * real + imaginary * imaginary) * STORED_SCALE).astype(np.float32)


def make_mr_case(seed: int, contrasts: tuple[str, ...] = ("T1", "T2"), region: str = "chest", matrix: int = 128,
                 slice_thickness: float = 4.0, lesions: tuple[int, int] = (0, 3)) -> MRCase:
    """The MR phantom study for a seed: the same arguments always give the same case. The first contrast is
    scanned on an axial grid of ``matrix``² pixels and ``slice_thickness``; the others on grids of their own."""
    _check(contrasts)
    rng = np.random.default_rng(seed)
    anatomy = random_anatomy(rng, nodules=lesions)
    pose = random_pose(rng)
    first, position = random_grid(rng, anatomy, pose, region, matrix=matrix, slice_thickness=slice_thickness,
                                  orientation="HFS")
    images, grids, labels = {}, {}, np.zeros(0, np.uint8)
    for n, contrast in enumerate(contrasts):
        grid = first if n == 0 else _series_grid(first, rng)
        hu, truth = render(anatomy, pose, grid, rng, 0.0)
        if n == 0:
            labels = truth
        images[contrast], grids[contrast] = _signal(hu, contrast, rng), grid
    return MRCase(tuple(contrasts), images, grids, labels, position)


def _image(case: MRCase, contrast: str) -> sitk.Image:
    grid = case.grids[contrast]
    return image_from_array(case.images[contrast], grid.spacing, grid.origin, grid.direction)


def mr_images(case: MRCase) -> tuple[list[sitk.Image], sitk.Image]:
    """Every contrast resampled onto the first contrast's grid (linear, float32), and the truth there:
    what ``sitk.Compose`` stacks into a multi-channel model's input."""
    first = _image(case, case.contrasts[0])
    channels = [first] + [sitk.Resample(_image(case, c), first, sitk.Transform(), sitk.sitkLinear, 0.0,
                                        sitk.sitkFloat32) for c in case.contrasts[1:]]
    g = case.first
    return channels, image_from_array(case.labels, g.spacing, g.origin, g.direction)


@dataclass(frozen=True)
class MRStudy:
    """An MR phantom study written as DICOM: one series (folder) per contrast, one frame of reference."""

    case: MRCase
    study_instance_uid: str
    frame_of_reference_uid: str
    folders: dict[str, Path]
    paths: dict[str, list[Path]]
    series_instance_uids: dict[str, str]
    labels: sitk.Image  # the truth on the first contrast's grid


def write_mr_study(folder: Path, seed: int, contrasts: tuple[str, ...] = ("T1", "T2"), region: str = "chest",
                   matrix: int = 128, slice_thickness: float = 4.0, body_part: str = "CHEST") -> MRStudy:
    """Write ``make_mr_case(seed, contrasts, ...)`` as one MR study: the series of contrast ``c`` in
    ``folder/<c with spaces as _>``, SeriesDescription "T1 AX", "T2 AX", "FLAIR AX" or "T1 POST GD",
    series numbers 1, 2, ... in the order given."""
    case = make_mr_case(seed, contrasts, region, matrix, slice_thickness)
    base = StudyIdentity.from_seed(seed)
    source = f"ainode-mr-phantom-{seed}"
    base = replace(base, patient_id=f"MR-PHANTOM-{seed:04d}", study_instance_uid=stable_uid(source, "study"),
                   frame_of_reference_uid=stable_uid(source, "frame of reference"), accession_number="PHANTOMMR")
    folders, paths, uids = {}, {}, {}
    for n, contrast in enumerate(case.contrasts):
        identity = replace(base, series_instance_uid=stable_uid(source, f"series {contrast}"), series_number=n + 1)
        sequence = dict(SEQUENCES[contrast])
        description = str(sequence.pop("SeriesDescription"))
        extra = {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "SequenceVariant": "NONE", "ScanOptions": "",
                 "MRAcquisitionType": "2D", "MagneticFieldStrength": "1.5", "EchoTrainLength": "1", **sequence}
        folders[contrast] = folder / contrast.replace(" ", "_")
        paths[contrast] = write_series(case.images[contrast], case.grids[contrast], identity, folders[contrast],
                                       case.patient_position, body_part, modality="MR",
                                       series_description=description, extra=extra)
        uids[contrast] = identity.series_instance_uid
    return MRStudy(case, base.study_instance_uid, base.frame_of_reference_uid, folders, paths, uids,
                   mr_images(case)[1])


def write_mr_cases(folder: Path, seeds: list[int], contrasts: tuple[str, ...] = ("T1", "T2"), region: str = "chest",
                   matrix: int = 96, slice_thickness: float = 4.0) -> Path:
    """MR phantoms as an nnU-Net dataset in ``folder``: ``imagesTr/mr<seed>_000K.nii.gz`` (channel K, every
    channel on the first's grid), ``labelsTr/mr<seed>.nii.gz`` and ``dataset.json`` naming the channels;
    returns ``folder``."""
    _check(contrasts)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        channels, labels = mr_images(make_mr_case(seed, contrasts, region, matrix, slice_thickness))
        for k, image in enumerate(channels):
            sitk.WriteImage(image, str(folder / "imagesTr" / f"mr{seed}_{k:04d}.nii.gz"))
        sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(folder / "labelsTr" / f"mr{seed}.nii.gz"))
    dataset = {"channel_names": {str(k): c for k, c in enumerate(contrasts)}, "labels": {"background": 0, "lung": 1},
               "numTraining": len(seeds), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return folder
