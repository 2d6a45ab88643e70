"""Unevenly spaced series (sequential CT, variable pitch), with and without gantry tilt: resampled onto a
regular grid for the model, the mask back on every acquired slice, a sphere where it is in the patient."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from db.errors import RejectedInput
from training.dicom import StudyIdentity, write_series
from training.phantom import Grid
from worker.assembly.geometry import tilt_degrees
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.grid import to_model_space
from worker.models.runtime import ModelOutput
from worker.models.spec import ModelSpec, load_spec
from worker.pipeline import Pipeline, PipelineConfig
from worker.results.content import source_headers
from worker.results.findings import find
from worker.results.identity import OutputSettings, result_identity
from worker.results.seg import build_segmentation

# 1.08 to 7 mm, as in a real GE sequential head CT: thin slices, then thicker ones, a few thickest
GAPS = [1.08] * 6 + [2.5] * 6 + [5.0] * 12 + [7.0] * 4
SPHERE_MM = 22.0
SPHERE_HU, BACKGROUND_HU = 600.0, 20.0


def uneven_series(folder: Path, gaps: list[float], tilt_deg: float = 0.0, seed: int = 1) -> tuple[list[Path], Grid,
                                                                                                   np.ndarray]:
    """A 96x96 CT series with slices ``gaps`` apart along z (the table moves along z; a tilted gantry leans
    the image plane), holding one bright sphere; returns the files, the grid and the sphere's centre (LPS)."""
    tilt = np.deg2rad(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), -np.sin(tilt)])
    direction = np.stack([row, col, np.array([0, 0, 1.0])], axis=1)
    offsets = tuple(float(v) for v in np.concatenate([[0.0], np.cumsum(gaps)]))
    grid = Grid((96, 96, len(offsets)), (2.0, 2.0, float(np.median(gaps))), np.array([-95.0, -90.0, -60.0]),
                direction, offsets)
    centre = np.array([8.0, 4.0, -60.0 + offsets[14]])  # across the change from 2.5 to 5 mm gaps
    hu = np.empty((grid.size[2], 96, 96), dtype=np.float32)
    for k in range(grid.size[2]):
        inside = np.linalg.norm(grid.slice_points(k) - centre, axis=-1) <= SPHERE_MM
        hu[k] = np.where(inside, SPHERE_HU, BACKGROUND_HU)
    paths = write_series(hu, grid, StudyIdentity.from_seed(seed), folder, body_part="HEAD")
    return paths, grid, centre


class ThresholdRuntime:
    """A runtime whose model is a threshold on the model's grid: the geometry path without a network, so
    that where the mask lands depends on geometry alone."""

    device = "cpu"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def infer(self, image: sitk.Image) -> ModelOutput:
        x, grid = to_model_space(image, self.spec.preprocess)
        lo, hi = self.spec.preprocess.window
        middle = ((SPHERE_HU + BACKGROUND_HU) / 2 - lo) / (hi - lo)
        p = 1 / (1 + np.exp(-(x - middle) * 60))
        return ModelOutput(grid, probabilities=np.stack([1 - p, p]).astype(np.float32))


def mask_centre(volume: Volume, labels: np.ndarray) -> np.ndarray:
    """Patient coordinates of a mask's centre, each voxel placed on its own frame's plane and weighted by
    the volume it stands for (thin slices stand for less)."""
    points, weights = [], []
    for frame, plane, ml in zip(volume.frames, labels, volume.slice_ml):
        rows, cols = np.nonzero(plane)
        row, col = frame.orientation[:3], frame.orientation[3:]
        spacing = frame.pixel_spacing
        points.append(frame.position + np.outer(cols * spacing[1], row) + np.outer(rows * spacing[0], col))
        weights.append(np.full(len(rows), ml))
    return np.average(np.concatenate(points), axis=0, weights=np.concatenate(weights))


@pytest.mark.parametrize("tilt_deg", [0.0, 18.5])
def test_an_unevenly_spaced_series_is_resampled_for_the_model_and_comes_back_on_its_slices(
        tmp_path: Path, tilt_deg: float) -> None:
    paths, grid, centre = uneven_series(tmp_path / "series", GAPS, tilt_deg)
    volume = assemble(paths, min_slices=16)
    assert volume.acquired is not None and len(volume.frames) == len(GAPS) + 1
    assert tilt_degrees(volume.image) == pytest.approx(tilt_deg, abs=0.01)
    # the regular image starts and ends on the first and last acquired slices
    size = volume.image.GetSize()
    np.testing.assert_allclose(volume.image.GetOrigin(), volume.frames[0].position, atol=1e-3)
    np.testing.assert_allclose(volume.image.TransformIndexToPhysicalPoint((0, 0, size[2] - 1)),
                               volume.frames[-1].position, atol=1e-3)
    spacing = volume.image.GetSpacing()[2]
    assert spacing <= 2.5 / np.cos(np.deg2rad(tilt_deg)) + 1e-6, "no coarser than half the median gap"
    # every reference slice is an acquired one
    for frame, reference in zip(volume.frames, volume.acquired.references(volume.image)):
        np.testing.assert_allclose(reference.GetOrigin(), frame.position, atol=1e-3)
    np.testing.assert_array_equal(volume.values, np.rint(np.stack([pydicom.dcmread(p).pixel_array for p in paths])
                                                         .astype(np.float32) - 1024))

    labels = Pipeline(ThresholdRuntime(load_spec()), PipelineConfig(tmp_path)).segment(volume)
    assert labels.shape == (len(volume.frames), 96, 96)
    truth = np.stack([np.linalg.norm(grid.slice_points(k) - centre, axis=-1) <= SPHERE_MM
                      for k in range(grid.size[2])])
    per_slice = [(2 * (a & b).sum() / (a.sum() + b.sum())) for a, b in zip(labels.astype(bool), truth) if b.sum() > 40]
    assert min(per_slice) > 0.85, per_slice  # each acquired slice holds the sphere's own cross-section
    found = mask_centre(volume, labels)
    print(f"tilt {tilt_deg}: sphere centre off by {np.round(found - centre, 2)} mm")
    assert np.linalg.norm(found - centre) <= 2.0  # within one voxel (2 mm pixels, 1.08-7 mm slices)
    ml = find(volume, labels, load_spec()).present[0].volume_ml
    assert ml == pytest.approx(4 / 3 * np.pi * SPHERE_MM**3 / 1000, rel=0.08)


def test_the_seg_of_an_uneven_series_puts_every_frame_on_its_acquired_slice(tmp_path: Path) -> None:
    paths, grid, centre = uneven_series(tmp_path / "series", GAPS, tilt_deg=18.5)
    volume = assemble(paths, min_slices=16)
    spec = load_spec()
    labels = Pipeline(ThresholdRuntime(spec), PipelineConfig(tmp_path)).segment(volume)
    identity = result_identity(spec, "digest", volume.sop_instance_uids)
    seg = build_segmentation(volume, source_headers(volume), find(volume, labels, spec), spec, identity,
                             OutputSettings())
    seg.save_as(tmp_path / "seg.dcm")
    read = hd.seg.segread(tmp_path / "seg.dcm")
    by_source = {str(ds.SOPInstanceUID): ds for ds in volume.datasets}
    for item in read.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in by_source[source].ImagePositionPatient], atol=1e-3)
    mask = read.get_pixels_by_source_instance(volume.sop_instance_uids, assert_missing_frames_are_empty=True)[..., 0]
    np.testing.assert_array_equal(mask > 0, labels > 0)


def test_a_gap_larger_than_the_limit_is_refused_naming_it(tmp_path: Path) -> None:
    gaps = [5.0] * 20 + [13.0] + [5.0] * 5
    paths, _, _ = uneven_series(tmp_path / "series", gaps)
    with pytest.raises(RejectedInput, match=r"a gap of 13\.00 mm between .* is more than 2\.5 times the median "
                                            r"spacing of 5\.00 mm \(worker\.max_slice_gap_ratio\)"):
        assemble(paths)
    assert assemble(paths, max_gap_ratio=3.0).acquired is not None


def test_an_isolated_gap_of_two_spacings_is_still_a_missing_slice(tmp_path: Path) -> None:
    """Evenly spaced but for one double gap: a slice lost on the way, not a change of pitch."""
    paths, _, _ = uneven_series(tmp_path / "series", [5.0] * 12 + [10.0] + [5.0] * 6)
    with pytest.raises(RejectedInput, match="uneven slice spacing: 10.00 mm between .* where 5.00 mm is expected "
                                            r"\(missing slice\?\)"):
        assemble(paths)
    assert assemble(paths, max_missing=1).interpolated == 1


def test_a_change_of_pitch_is_not_taken_for_missing_slices(tmp_path: Path) -> None:
    paths, _, _ = uneven_series(tmp_path / "series", [2.5] * 10 + [5.0] * 12)
    volume = assemble(paths)
    assert volume.acquired is not None and volume.interpolated == 0
    assert volume.slice_ml[0] == pytest.approx(2 * 2 * 2.5 / 1000) and volume.slice_ml[-1] == pytest.approx(0.02)


@pytest.mark.slow
def test_a_real_chest_ct_kept_on_uneven_slices_is_segmented_on_each_of_them(tmp_path: Path) -> None:
    """A real chest CT (LCTSC, 3 mm slices) written as a DICOM series that keeps every other slice (6 mm)
    at the bottom and the top and every slice (3 mm) in the middle: the bundled model's lungs, on the
    acquired slices, against the reference contours of those slices."""
    from conftest import SHARED_DATA
    from training.metrics import dice
    from worker.models.postprocess import clean
    from worker.models.unet import UNetRuntime

    folder = SHARED_DATA / "real-chest-ct"
    image = sitk.ReadImage(str(folder / "imagesTr" / "lctsc-S1-102.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "lctsc-S1-102.nii.gz")))
    n = image.GetSize()[2]
    kept = sorted({*range(0, n // 3, 2), *range(n // 3, 2 * n // 3), *range(2 * n // 3, n, 2)})
    spacing = image.GetSpacing()
    offsets = tuple(k * spacing[2] for k in kept)
    grid = Grid((image.GetSize()[0], image.GetSize()[1], len(kept)), spacing, np.array(image.GetOrigin()),
                np.reshape(image.GetDirection(), (3, 3)), offsets)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    spec = load_spec()
    pipeline = Pipeline(UNetRuntime(spec, device="cpu"), PipelineConfig(tmp_path))

    def lungs(paths: list[Path]) -> tuple[np.ndarray, float]:
        volume = assemble(paths, min_slices=16)
        labels = clean(pipeline.segment(volume), spec.labels, volume.voxel_ml)
        return labels, find(volume, labels, spec).present[0].volume_ml

    uneven = write_series(hu[kept], grid, StudyIdentity.from_seed(5), tmp_path / "uneven")
    assert assemble(uneven, min_slices=16).acquired is not None
    labels, ml = lungs(uneven)
    every = Grid(image.GetSize(), spacing, np.array(image.GetOrigin()), np.reshape(image.GetDirection(), (3, 3)))
    _, every_ml = lungs(write_series(hu, every, StudyIdentity.from_seed(6), tmp_path / "every"))
    score = dice(labels == 1, truth[kept] == 1)
    print(f"{len(kept)} of {n} slices: Dice {score:.3f}, {ml:.0f} mL (every slice: {every_ml:.0f} mL)")
    assert labels.shape[0] == len(kept) and score >= 0.93
    assert ml == pytest.approx(every_ml, rel=0.03), "each kept slice counts its own share of the stack"
