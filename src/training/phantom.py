"""Synthetic CT scans with exact truth: a random body (``training.anatomy``) scanned on a random grid.

The demo model is trained, evaluated and demonstrated on these beside real cases, so nothing has to be
downloaded. A scan covers one field of view (``REGIONS``: chest, abdomen with or without the lung bases,
pelvis, head, chest–abdomen–pelvis), at a random position and rotation of the body, on a random grid
(matrix, pixel size, slice thickness, head- or feet-first, oblique or tilted), with the blur and the
noise of a random dose. Intensities are Hounsfield units; the only label is the lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.anatomy import LABEL_LUNG, Anatomy, random_anatomy

REGIONS = ("chest", "upper-abdomen", "abdomen", "pelvis", "head", "chest-abdomen-pelvis")
WITHOUT_LUNGS = ("abdomen", "pelvis", "head")
ORIENTATIONS = ("HFS", "FFS", "oblique")  # "tilt" (gantry tilt) only when asked for

__all__ = ["LABEL_LUNG", "REGIONS", "WITHOUT_LUNGS", "Grid", "PhantomCase", "make_case", "label_centre", "random_pose"]


@dataclass(frozen=True)
class Grid:
    """A scan grid in DICOM patient coordinates (LPS, mm).

    ``size`` and ``spacing`` are in ITK order (column index i, row index j, slice index k); the columns of
    ``direction`` are the directions of i, j and k, so the first two are DICOM's ImageOrientationPatient.
    ``offsets``, when given, are each slice's distance from the first along k (an unevenly spaced series);
    otherwise slice k lies at k times the spacing.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    offsets: tuple[float, ...] | None = None

    def slice_offset(self, k: int) -> float:
        return self.offsets[k] if self.offsets is not None else k * self.spacing[2]

    def slice_shares(self) -> np.ndarray:
        """The share of the stack (mm along it) each slice stands for: half the gaps on either side."""
        if self.offsets is None:
            return np.full(self.size[2], self.spacing[2])
        gaps = np.diff(self.offsets)
        return np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])

    def slice_positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice, shape (k, 3)."""
        offsets = np.array([self.slice_offset(k) for k in range(self.size[2])])[:, None]
        return self.origin[None, :] + offsets * self.direction[:, 2][None, :]

    def slice_points(self, k: int) -> np.ndarray:
        """Patient coordinates of every voxel centre of slice k, shape (rows, cols, 3)."""
        i = np.arange(self.size[0], dtype=np.float64) * self.spacing[0]
        j = np.arange(self.size[1], dtype=np.float64) * self.spacing[1]
        base = self.origin + self.slice_offset(k) * self.direction[:, 2]
        return (
            base[None, None, :]
            + j[:, None, None] * self.direction[:, 1][None, None, :]
            + i[None, :, None] * self.direction[:, 0][None, None, :]
        )

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Patient coordinates of (z, y, x) array indices (N, 3), fractional k included."""
        index = np.asarray(index, dtype=np.float64)
        k = index[:, 0]
        if self.offsets is not None:
            offset = np.interp(k, np.arange(self.size[2]), np.array(self.offsets))
        else:
            offset = k * self.spacing[2]
        return (self.origin[None, :] + offset[:, None] * self.direction[:, 2][None, :]
                + (index[:, 1] * self.spacing[1])[:, None] * self.direction[:, 1][None, :]
                + (index[:, 2] * self.spacing[0])[:, None] * self.direction[:, 0][None, :])


@dataclass(frozen=True)
class Pose:
    """Where the body lies in patient space: ``rotation`` maps body axes into patient axes about ``centre``."""

    centre: np.ndarray
    rotation: np.ndarray

    def to_body(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre) @ self.rotation


def _rotation(rng: np.random.Generator, max_yaw_deg: float, max_tilt_deg: float) -> np.ndarray:
    yaw, pitch, roll = np.deg2rad(
        [rng.uniform(-max_yaw_deg, max_yaw_deg), rng.uniform(-max_tilt_deg, max_tilt_deg),
         rng.uniform(-max_tilt_deg, max_tilt_deg)]
    )
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return rz @ rx @ ry


def random_pose(rng: np.random.Generator) -> Pose:
    """Where a random body lies on the table: a shift and a small turn."""
    return Pose(np.array([rng.uniform(-30, 30), rng.uniform(-20, 40), rng.uniform(-200, 50)]),
                _rotation(rng, 8.0, 3.0))


def field_of_view(rng: np.random.Generator, anatomy: Anatomy, region: str) -> tuple[float, float, float]:
    """Lowest and highest body-frame z of a region's scan, and the in-plane field of view (mm)."""
    lm, o = anatomy.landmarks, anatomy.outline
    width = 2 * max(float(o.ax.max()) * 1.05, float(o.ay.max()) * 1.3) + rng.uniform(10, 80)
    if rng.random() < 0.15:
        width = 2 * float(o.ax.max()) * rng.uniform(0.85, 1.0)  # the body runs past the field of view
    if region == "chest":
        return lm.lung_bottom - rng.uniform(10, 70), lm.apex + rng.uniform(10, 40), width
    if region == "upper-abdomen":
        high = lm.domes[0] + rng.uniform(-25, 30)
        return high - rng.uniform(160, 300), high, width
    if region == "abdomen":
        high = lm.lung_bottom - rng.uniform(25, 60)
        return max(high - rng.uniform(180, 300), lm.pubis), high, width
    if region == "pelvis":
        return lm.pubis - rng.uniform(30, 70), lm.iliac_crest + rng.uniform(0, 50), width
    if region == "head":
        return lm.skull_base - rng.uniform(20, 75), lm.vertex + rng.uniform(5, 20), rng.uniform(200, 260)
    if region == "chest-abdomen-pelvis":
        return lm.pubis - rng.uniform(30, 70), lm.apex + rng.uniform(10, 40), width
    raise ValueError(f"region {region!r} is not one of {REGIONS}")


def random_grid(rng: np.random.Generator, anatomy: Anatomy, pose: Pose, region: str = "chest", matrix: int = 256,
                slice_thickness: float | None = None, orientation: str | None = None,
                min_slices: int = 0, gaps: tuple[float, ...] | None = None) -> tuple[Grid, str]:
    """A scan grid covering the region, and the PatientPosition that goes with it. ``gaps`` makes an
    unevenly spaced stack of those gaps (mm along the stack), centred on the region."""
    orientation = orientation or str(rng.choice(ORIENTATIONS, p=[0.6, 0.25, 0.15]))
    if orientation not in (*ORIENTATIONS, "tilt"):
        raise ValueError(f"orientation {orientation!r} is not one of {ORIENTATIONS + ('tilt',)}")
    thickness = slice_thickness or float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    low, high, width = field_of_view(rng, anatomy, region)
    pixel = round(width / matrix, 3)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    position = "HFS"
    if orientation == "FFS":
        row_dir = np.array([-1.0, 0, 0])
        position = "FFS"
    elif orientation == "oblique":
        angle = np.deg2rad(rng.uniform(-12, 12))
        col_dir = np.array([0, np.cos(angle), np.sin(angle)])
    stack = np.cross(row_dir, col_dir)
    if orientation == "tilt":
        # gantry tilt: the image plane leans, the table (and so the stack) still moves along z
        angle = np.deg2rad(rng.uniform(12, 25) * rng.choice([-1, 1]))
        col_dir = np.array([0, np.cos(angle), -np.sin(angle)])
        stack = np.array([0.0, 0.0, 1.0])
    slices = max(min_slices, int(np.ceil((high - low) / thickness)))
    offsets = None
    if gaps:
        offsets = tuple(float(v) for v in np.concatenate([[0.0], np.cumsum(gaps)]))
        slices, thickness = len(offsets), float(np.median(gaps))
    direction = np.stack([row_dir, col_dir, stack / np.linalg.norm(stack)], axis=1)
    middle = pose.centre + pose.rotation @ np.array([0.0, rng.uniform(0, 25), (low + high) / 2])
    centre = middle + rng.uniform(-10, 10, size=3) * np.array([1, 1, 0.3])
    length = offsets[-1] if offsets else (slices - 1) * thickness
    half = direction @ np.array([(matrix - 1) * pixel / 2, (matrix - 1) * pixel / 2, length / 2])
    return Grid((matrix, matrix, slices), (pixel, pixel, thickness), centre - half, direction, offsets), position


def render(anatomy: Anatomy, pose: Pose, grid: Grid, rng: np.random.Generator,
           noise_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """HU image (with blur and noise) and truth labels on a grid, both shaped (slices, rows, cols)."""
    shape = (grid.size[2], grid.size[1], grid.size[0])
    hu = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.uint8)
    for k in range(grid.size[2]):
        points = pose.to_body(grid.slice_points(k).reshape(-1, 3))
        values, truth = anatomy.render(points)
        hu[k], labels[k] = values.reshape(shape[1:]), truth.reshape(shape[1:])
    psf_mm = rng.uniform(0.6, 1.4)
    thickness = grid.spacing[2] if grid.offsets is None else float(np.median(np.diff(grid.offsets)))
    sigma = [min(psf_mm / thickness, 1.0), psf_mm / grid.spacing[1], psf_mm / grid.spacing[0]]
    hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest")
    noise = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=[0, rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)])
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    return hu + noise, labels


@dataclass(frozen=True)
class PhantomCase:
    """One scanned phantom: image, truth and the grid they share."""

    hu: np.ndarray
    labels: np.ndarray
    grid: Grid
    patient_position: str
    anatomy: Anatomy
    pose: Pose
    region: str


def make_case(seed: int, lesions: tuple[int, int] = (0, 3), region: str = "chest",
              **grid_options: object) -> PhantomCase:
    """The phantom scan for a seed and region: the same arguments always give the same case. ``lesions``
    is the range of the number of lung nodules (part of the lung label)."""
    rng = np.random.default_rng(seed)
    anatomy = random_anatomy(rng, nodules=lesions)
    pose = random_pose(rng)
    grid, position = random_grid(rng, anatomy, pose, region, **grid_options)  # type: ignore[arg-type]
    noise = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
    hu, labels = render(anatomy, pose, grid, rng, noise)
    return PhantomCase(hu, labels, grid, position, anatomy, pose, region)


def label_centre(grid: Grid, labels: np.ndarray, value: int = LABEL_LUNG) -> np.ndarray:
    """Patient coordinates (LPS, mm) of the centre of a label's voxels on ``grid``, each voxel weighted by
    the share of the stack its slice stands for (they differ when the slices are unevenly spaced)."""
    where = np.argwhere(labels == value)
    return np.average(grid.index_to_patient(where), axis=0, weights=grid.slice_shares()[where[:, 0]])
