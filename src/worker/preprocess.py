"""Between the source grid and the model's grid: orient, resample, window, and back again.

Training and inference both go through these functions, so the model sees at run time exactly the
kind of input it was trained on.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from worker.modelspec import PreprocessSpec


def model_grid(image: sitk.Image, spec: PreprocessSpec) -> sitk.Image:
    """An empty image on the model's grid covering the same extent as ``image``."""
    oriented = sitk.DICOMOrient(image, spec.orientation)
    in_spacing = np.array(oriented.GetSpacing())
    out_spacing = np.array(spec.spacing)
    size = [max(1, math.ceil(n * s / o)) for n, s, o in zip(oriented.GetSize(), in_spacing, out_spacing)]
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    origin = np.array(oriented.GetOrigin()) + direction @ ((out_spacing - in_spacing) / 2)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in out_spacing))
    grid.SetDirection(oriented.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def to_model_space(image: sitk.Image, spec: PreprocessSpec) -> tuple[np.ndarray, sitk.Image]:
    """Windowed, [0, 1]-scaled intensities on the model grid (array z, y, x) and that grid."""
    grid = model_grid(image, spec)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(grid)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetUseNearestNeighborExtrapolator(True)  # the grid's last row may reach past the last slice
    array = sitk.GetArrayFromImage(resampler.Execute(sitk.Cast(image, sitk.sitkFloat32)))
    lo, hi = spec.window
    np.clip(array, lo, hi, out=array)
    array -= lo
    array /= hi - lo
    return array, grid


def labels_to_model_space(labels: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Truth labels on the model grid (nearest neighbour), for training."""
    out = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def probabilities_to_source(probabilities: np.ndarray, grid: sitk.Image, source: sitk.Image) -> np.ndarray:
    """Class probabilities (C, z, y, x) on the model grid → label array on the exact source grid.

    Interpolating probabilities, not labels, keeps boundaries smooth at sub-voxel precision.
    """
    vector = sitk.GetImageFromArray(np.moveaxis(probabilities.astype(np.float32), 0, -1), isVector=True)
    vector.CopyInformation(grid)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(source)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
    on_source = sitk.GetArrayFromImage(resampler.Execute(vector))
    return np.argmax(on_source, axis=-1).astype(np.uint8)


def image_from_array(array: np.ndarray, spacing: tuple[float, float, float], origin: np.ndarray,
                     direction: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array and DICOM-style geometry (direction columns = i, j, k)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).reshape(-1)))
    return image
