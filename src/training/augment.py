"""Training patches with online augmentation: a random crop taken at the same place in image and label,
scaled and turned a little, flipped, with its intensities shifted and scaled, blurred or made noisier.

Everything happens on the model grid, on one patch at a time, so an augmentation costs milliseconds and
the cases stay in memory once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from training.cases import PreparedCase


@dataclass(frozen=True)
class Augmentation:
    scale: tuple[float, float] = (0.8, 1.25)  # > 1 shows more anatomy in the patch (things look smaller)
    stretch: float = 0.05  # and each axis by up to this much more or less
    rotate_deg: tuple[float, float, float] = (5.0, 5.0, 15.0)  # about the z, y and x array axes
    flip: tuple[float, float, float] = (0.2, 0.2, 0.5)  # probability of a flip along z, y and x (left-right)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise: tuple[float, float] = (0.3, 0.03)  # probability, largest standard deviation
    blur: tuple[float, float] = (0.2, 1.0)  # probability, largest sigma in voxels
    focus: float = 0.5  # share of patches centred on a labelled voxel
    lookalike: float = 0.25  # share centred on an unlabelled voxel as dark as air inside the body


def _rotation(rng: np.random.Generator, degrees: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(3)
    for axis, limit in enumerate(degrees):
        angle = np.deg2rad(rng.uniform(-limit, limit))
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        matrix = matrix @ turn
    return matrix


def _centre(case: PreparedCase, rng: np.random.Generator, a: Augmentation) -> np.ndarray:
    draw = rng.random()
    for points, chance in ((case.labelled, a.focus), (case.lookalikes, a.focus + a.lookalike)):
        if draw < chance and len(points):
            return np.array(np.unravel_index(points[rng.integers(len(points))], case.labels.shape), dtype=np.float64)
    return np.array([rng.uniform(0, s - 1) for s in case.labels.shape])


def sample_patch(case: PreparedCase, size: int, rng: np.random.Generator,
                 augmentation: Augmentation = Augmentation()) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (image, labels) patch of ``size``³ voxels from ``case``; the image (C, size³) when the
    case has C channels."""
    a = augmentation
    stretch = rng.uniform(1 - a.stretch, 1 + a.stretch, size=3)
    transform = _rotation(rng, a.rotate_deg) * rng.uniform(*a.scale) * stretch[None, :]
    centre = _centre(case, rng, a)
    half = (size - 1) / 2
    corners = np.array([[i, j, k] for i in (-half, half) for j in (-half, half) for k in (-half, half)])
    reach = corners @ transform.T + centre  # the patch is an affine image of a cube: its box is its corners'
    shape = np.array(case.labels.shape)
    low = np.clip(np.floor(reach.min(axis=0)).astype(int), 0, shape - 1)
    high = np.clip(np.ceil(reach.max(axis=0)).astype(int) + 1, low + 1, shape)
    block = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    # the sampling grid, normalised to [-1, 1] over the block, in grid_sample's (x, y, z) = (last, middle,
    # first) array axis order; points beyond the volume take the nearest edge value, as inference's
    # replicate padding does
    extent = np.maximum(high - low - 1, 1)
    matrix = (2 / extent)[:, None] * transform * half
    shift = 2 * (centre - low) / extent - 1
    theta = np.concatenate([matrix[::-1, ::-1], shift[::-1, None]], axis=1)
    where = F.affine_grid(torch.from_numpy(theta.astype(np.float32))[None], [1, 1, size, size, size],
                          align_corners=True)
    channels = case.image.ndim == 4
    image = torch.from_numpy(case.image[(slice(None), *block) if channels else block].astype(np.float32))
    image = image[None] if channels else image[None, None]
    labels = torch.from_numpy(case.labels[block].astype(np.float32))[None, None]
    x = F.grid_sample(image, where, mode="bilinear", padding_mode="border", align_corners=True)[0].numpy()
    x = x if channels else x[0]
    y = F.grid_sample(labels, where, mode="nearest", padding_mode="border", align_corners=True)[0, 0].numpy()
    for axis, chance in enumerate(a.flip):
        if rng.random() < chance:
            x, y = np.flip(x, axis + channels), np.flip(y, axis)
    x = x * (1 + rng.uniform(-a.intensity_scale, a.intensity_scale)) + rng.uniform(-a.intensity_shift,
                                                                                 a.intensity_shift)
    if rng.random() < a.blur[0]:
        sigma = rng.uniform(0.3, a.blur[1])
        x = ndimage.gaussian_filter(x, (0.0, sigma, sigma, sigma) if channels else sigma)
    if rng.random() < a.noise[0]:
        x = x + rng.normal(0, rng.uniform(0, a.noise[1]), size=x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.uint8)
