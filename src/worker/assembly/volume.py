"""The volume data model: source frames with their place in patient space, and the 3D image they make.

Assembly (``worker.assembly``) builds these; the model and the result builders only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from worker.assembly import header


@dataclass(frozen=True)
class Frame:
    """One 2D source frame and where it sits in patient space (LPS, mm)."""

    path: Path
    dataset: Dataset
    number: int | None  # 1-based frame number in a multi-frame instance; None for a single-frame one
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        uid = header.string(self.dataset, "SOPInstanceUID", "?")
        return uid if self.number is None else f"{uid} frame {self.number}"


@dataclass(frozen=True)
class Volume:
    """A 3D image (HU or the modality's real values) and, for each of its slices, the source frame."""

    image: sitk.Image
    frames: tuple[Frame, ...]
    ignored: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()  # slice of the image holding each frame; the others were interpolated

    @property
    def interpolated(self) -> int:
        return self.image.GetSize()[2] - len(self.frames)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.image.GetSpacing())) / 1000.0

    @property
    def modality(self) -> str:
        return header.string(self.frames[0].dataset, "Modality")

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """The source instances' headers, each once: in slice order for single-frame series."""
        seen: dict[int, Dataset] = {}
        for frame in self.frames:
            seen.setdefault(id(frame.dataset), frame.dataset)
        return tuple(seen.values())

    @property
    def sop_instance_uids(self) -> list[str]:
        return [header.string(ds, "SOPInstanceUID") for ds in self.datasets]

    @property
    def multiframe(self) -> bool:
        return self.frames[0].number is not None

    def in_source_order(self, array: np.ndarray) -> np.ndarray:
        """The slices of a (slices, rows, cols) array that lie on source frames, in the order the frames are
        stored (one per single-frame instance, or a multi-frame object's frame order): what a SEG needs."""
        if self.slots and len(self.slots) != array.shape[0]:
            array = array[list(self.slots)]
        if not self.multiframe:
            return array
        out = np.empty_like(array)
        for k, frame in enumerate(self.frames):
            out[frame.number - 1] = array[k]  # type: ignore[operator]
        return out
