"""Class probabilities on a model's grid → labels on the exact source grid, in bounded memory.

The labels are those of linearly interpolated probabilities (smooth boundaries at sub-voxel precision),
computed exactly but without the full-resolution float vectors: a slab of source slices at a time, only
within the box where a label can win, and as margins over the background (``p_k - p_0``: one float image
fewer, and for a one-label model a single scalar resampling).

Why the box is exact: an interpolated point lies among the eight model voxels around it, and a convex
combination of probability vectors that each favour the background favours the background too. So a point
can take a label only where a voxel of its neighbourhood did on the model grid, and its nearest voxel is
within one voxel of that one: the model grid's labelled voxels, dilated by one, resampled by nearest
neighbour, cover every labelled source voxel.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

SLAB = 32  # source slices resampled at once: memory is that of one slab, however long the series


def _geometry(source: sitk.Image, start: tuple[int, int, int], size: tuple[int, int, int]) -> sitk.Image:
    """An image of ``size`` (x, y, z) on the source grid from index ``start``: geometry only, one byte a voxel."""
    reference = sitk.Image(list(size), sitk.sitkUInt8)
    reference.SetSpacing(source.GetSpacing())
    reference.SetDirection(source.GetDirection())
    reference.SetOrigin(source.TransformIndexToPhysicalPoint(start))
    return reference


def _resample(image: sitk.Image, reference: sitk.Image, interpolator: int, pixel: int) -> np.ndarray:
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetInterpolator(interpolator)
    resampler.SetOutputPixelType(pixel)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def _box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return box[0], box[1], box[2]


def labels_from_probabilities(probabilities: np.ndarray, grid: sitk.Image, source: sitk.Image,
                              slab: int = SLAB) -> np.ndarray:
    """Labels (z, y, x, uint8) on ``source``'s grid: the argmax of the probabilities (C, z, y, x) on ``grid``
    interpolated linearly, ties to the lower class, as a resampled probability vector would give."""
    winners = np.argmax(probabilities, axis=0)
    near = _on_grid(ndimage.binary_dilation(winners > 0, structure=np.ones((3, 3, 3), bool)).astype(np.uint8), grid)
    margins = [_on_grid((probabilities[k] - probabilities[0]).astype(np.float32), grid)
               for k in range(1, probabilities.shape[0])]
    width, height, depth = source.GetSize()
    out = np.zeros((depth, height, width), np.uint8)
    if not margins or not winners.any():
        return out
    for k0 in range(0, depth, slab):
        k1 = min(k0 + slab, depth)
        candidates = _resample(near, _geometry(source, (0, 0, k0), (width, height, k1 - k0)),
                               sitk.sitkNearestNeighbor, sitk.sitkUInt8)
        box = _box(candidates)
        if box is None:
            continue
        z, y, x = box
        reference = _geometry(source, (x.start, y.start, k0 + z.start),
                              (x.stop - x.start, y.stop - y.start, z.stop - z.start))
        best = np.zeros((z.stop - z.start, y.stop - y.start, x.stop - x.start), np.float32)
        labels = np.zeros(best.shape, np.uint8)
        for value, margin in enumerate(margins, start=1):
            m = _resample(margin, reference, sitk.sitkLinear, sitk.sitkFloat32)
            better = m > best
            labels[better] = value
            np.maximum(best, m, out=best)
        out[k0 + z.start:k0 + z.stop, y, x] = labels
    return out
