"""From the source grid to the grid of an ainode model (``model.toml``): orient, resample, normalise
(a CT window, or a z-score per MR channel).

Training and inference both go through these functions, so the model sees at run time exactly the
kind of input it was trained on. The way back to the source grid is ``runtime.to_source``.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from db.errors import RejectedInput
from worker.models.spec import GridModelSpec, PreprocessSpec


def model_grid(image: sitk.Image, spec: PreprocessSpec) -> sitk.Image:
    """An empty image on the model's grid covering the physical extent of ``image``.

    The grid is orthogonal and oriented as the model expects even when ``image`` is sheared (a tilted
    gantry): its axes come from the slice plane, its extent from the corners of the acquired volume.
    """
    direction = np.reshape(image.GetDirection(), (3, 3))
    row, col = direction[:, 0], direction[:, 1]
    plane = np.stack([row, col, np.cross(row, col)], axis=1)
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(tuple(float(v) for v in plane.reshape(-1)))
    axes = np.reshape(sitk.DICOMOrient(probe, spec.orientation).GetDirection(), (3, 3))
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    physical = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c))
                         for c in corners])
    along = physical @ axes
    low, high = along.min(axis=0), along.max(axis=0)
    out_spacing = np.array(spec.spacing)
    out_size = [max(1, math.ceil((h - lo) / s - 1e-6)) for lo, h, s in zip(low, high, out_spacing)]
    grid = sitk.Image(out_size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in out_spacing))
    grid.SetDirection(tuple(float(v) for v in axes.reshape(-1)))
    grid.SetOrigin(tuple(float(v) for v in axes @ (low + out_spacing / 2)))
    return grid


def to_model_space(image: sitk.Image, spec: PreprocessSpec) -> tuple[np.ndarray, sitk.Image]:
    """Normalised intensities on the model grid and that grid: an array (z, y, x) for an image of one
    channel, (C, z, y, x) for a vector image (``sitk.Compose``) of C, each channel resampled and
    normalised on its own."""
    grid = model_grid(image, spec)
    count = image.GetNumberOfComponentsPerPixel()
    if count == 1:
        return _normalised(_resampled(image, grid), spec), grid
    channels = [_normalised(_resampled(sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32), grid), spec)
                for c in range(count)]
    return np.stack(channels), grid


def _resampled(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(grid)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetUseNearestNeighborExtrapolator(True)  # the grid's last row may reach past the last slice
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _normalised(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.normalize == "zscore":
        # MR has no absolute scale: each channel by its own statistics over the voxels that hold signal
        inside = array > 0
        if inside.any():
            values = array[inside].astype(np.float64)
            array[inside] = (values - values.mean()) / max(float(values.std()), 1e-8)
        array[~inside] = 0.0
        return array
    lo, hi = spec.window
    np.clip(array, lo, hi, out=array)
    array -= lo
    array /= hi - lo
    return array


def expect_channels(image: sitk.Image, spec: GridModelSpec) -> None:
    """Refuse an image whose number of channels (vector components) is not the model's."""
    count = image.GetNumberOfComponentsPerPixel()
    if count != spec.in_channels:
        takes = f"{spec.in_channels} channels ({', '.join(spec.channels)})" if spec.channels else "one channel"
        raise RejectedInput(f"model {spec.name} {spec.version} takes {takes}; the image given has {count}")


def labels_to_model_space(labels: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Truth labels on the model grid (nearest neighbour), for training."""
    out = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def image_from_array(array: np.ndarray, spacing: tuple[float, float, float], origin: np.ndarray,
                     direction: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array and DICOM-style geometry (direction columns = i, j, k)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).reshape(-1)))
    return image
