"""Solid shapes of the phantom anatomy, tested on many points at once (body frame, mm).

Each shape knows the box it fits in, so a slice tests only the points inside that box, and only the
shapes whose box it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray
    axes: np.ndarray

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.axes, self.centre + self.axes

    def contains(self, q: np.ndarray) -> np.ndarray:
        return (((q - self.centre) / self.axes) ** 2).sum(axis=-1) <= 1.0


@dataclass(frozen=True)
class Shell:
    """The skin of an ellipsoid, ``thickness`` mm deep (a skull, a bowel wall)."""

    outer: Ellipsoid
    thickness: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.outer.bounds

    def contains(self, q: np.ndarray) -> np.ndarray:
        inner = Ellipsoid(self.outer.centre, np.maximum(self.outer.axes - self.thickness, 1e-3))
        return self.outer.contains(q) & ~inner.contains(q)


@dataclass(frozen=True)
class Capsule:
    """Points within ``radius`` of the segment a–b: a vessel, an airway, a rib segment."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def contains(self, q: np.ndarray) -> np.ndarray:
        ab = self.b - self.a
        t = np.clip(((q - self.a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        nearest = self.a + t[..., None] * ab
        return ((q - nearest) ** 2).sum(axis=-1) <= self.radius**2


@dataclass(frozen=True)
class Cylinder:
    """An elliptic cylinder along z (the spinal canal, a vertebral column, an arm)."""

    centre: np.ndarray  # x, y
    axes: np.ndarray  # x, y semi-axes
    z0: float
    z1: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([*(self.centre - self.axes), self.z0]), np.array([*(self.centre + self.axes), self.z1]))

    def contains(self, q: np.ndarray) -> np.ndarray:
        inside = (((q[..., :2] - self.centre) / self.axes) ** 2).sum(axis=-1) <= 1.0
        return inside & (q[..., 2] >= self.z0) & (q[..., 2] <= self.z1)


def tube(points: list[np.ndarray], radii: list[float]) -> list[Capsule]:
    """A bent tube through ``points``, its radius changing segment by segment."""
    return [Capsule(a, b, r) for a, b, r in zip(points, points[1:], radii)]


def crosses(bounds: tuple[np.ndarray, np.ndarray], low: np.ndarray, high: np.ndarray) -> bool:
    """Whether a shape's box and the box of the points (``low``, ``high``) overlap."""
    return bool(np.all(bounds[0] <= high) and np.all(bounds[1] >= low))


def inside_box(q: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Indices of the points in a shape's box: the only ones its (costlier) test needs to see."""
    lo, hi = bounds
    keep = (q[:, 0] >= lo[0]) & (q[:, 0] <= hi[0]) & (q[:, 1] >= lo[1]) & (q[:, 1] <= hi[1])
    keep &= (q[:, 2] >= lo[2]) & (q[:, 2] <= hi[2])
    return np.flatnonzero(keep)
