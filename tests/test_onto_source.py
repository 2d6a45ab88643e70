"""Labels back on the source grid, a slab at a time within the box where a label can win, are those of the
whole probability vector resampled at once with SimpleITK (the reference: what ainode did before), on an
oblique source grid larger than the model's, for one to three labels, and in any slab size."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from worker.models.onto_source import labels_from_probabilities


def reference_labels(probabilities: np.ndarray, grid: sitk.Image, source: sitk.Image) -> np.ndarray:
    vector = sitk.GetImageFromArray(np.moveaxis(probabilities, 0, -1), isVector=True)
    vector.CopyInformation(grid)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(source)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
    return np.argmax(sitk.GetArrayFromImage(resampler.Execute(vector)), axis=-1).astype(np.uint8)


def smooth_probabilities(classes: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 3) * 8 + (0.5 if k == 0 else 0.0)
                       for k in range(classes)])
    p = np.exp(logits)
    return (p / p.sum(axis=0)).astype(np.float32)


def grids(tilt_deg: float) -> tuple[sitk.Image, sitk.Image]:
    grid = sitk.Image([45, 50, 40], sitk.sitkUInt8)
    grid.SetSpacing((3.0, 3.0, 3.0))
    grid.SetOrigin((-60.0, -70.0, -50.0))
    source = sitk.Image([200, 180, 150], sitk.sitkInt16)  # reaches beyond the model grid: extrapolated
    source.SetSpacing((0.7, 0.75, 1.0))
    source.SetOrigin((-80.0, -80.0, -70.0))
    a = np.deg2rad(tilt_deg)
    source.SetDirection((np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0))
    return grid, source


@pytest.mark.parametrize(("classes", "slab", "tilt"), [(2, 32, 0.0), (2, 7, 11.0), (3, 32, 11.0), (4, 150, 30.0)])
def test_the_labels_are_those_of_the_resampled_probability_vector(classes: int, slab: int, tilt: float) -> None:
    grid, source = grids(tilt)
    probabilities = smooth_probabilities(classes, (40, 50, 45), seed=classes)
    expected = reference_labels(probabilities, grid, source)
    found = labels_from_probabilities(probabilities, grid, source, slab=slab)
    assert found.shape == expected.shape == (150, 180, 200)
    assert set(np.unique(expected)) == set(range(classes)), "every class appears: the test means something"
    differ = int((found != expected).sum())
    assert differ <= expected.size * 1e-6, f"{differ} voxels differ (rounding at exact ties only)"


def test_nothing_found_on_the_model_grid_is_nothing_on_the_source() -> None:
    grid, source = grids(5.0)
    probabilities = np.zeros((3, 40, 50, 45), np.float32)
    probabilities[0] = 1.0
    assert not labels_from_probabilities(probabilities, grid, source).any()
