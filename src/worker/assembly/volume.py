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
class AcquiredSlices:
    """An unevenly spaced stack as it was acquired: the values of its slices, each slice's distance from the
    first along the stack (the volume image's third axis) and the share of the stack it stands for along the
    normal. The model reads the volume's regular image; its answer comes back onto these slices."""

    values: np.ndarray  # (slices, rows, columns), in slice order
    offsets: tuple[float, ...]
    shares: tuple[float, ...]

    def references(self, image: sitk.Image) -> list[sitk.Image]:
        """One-slice images (geometry only) lying on the acquired slices, in slice order."""
        direction = np.reshape(image.GetDirection(), (3, 3))
        origin = np.array(image.GetOrigin())
        out = []
        for offset, share in zip(self.offsets, self.shares):
            reference = sitk.Image([image.GetSize()[0], image.GetSize()[1], 1], sitk.sitkUInt8)
            reference.SetSpacing((*image.GetSpacing()[:2], float(share)))
            reference.SetDirection(image.GetDirection())
            reference.SetOrigin(tuple(float(v) for v in origin + offset * direction[:, 2]))
            out.append(reference)
        return out


@dataclass(frozen=True)
class Volume:
    """A 3D image (HU or the modality's real values) and, for each of its slices, the source frame.

    The image is always a regular grid. For an unevenly spaced stack (``acquired`` set) it is the acquired
    slices resampled for the model, and the masks, measurements and SEG frames live on the acquired slices
    (``values``, ``slice_ml``); otherwise they live on the image itself."""

    image: sitk.Image
    frames: tuple[Frame, ...]
    ignored: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()  # slice of the image holding each frame; the others were interpolated
    acquired: AcquiredSlices | None = None

    @property
    def interpolated(self) -> int:
        return 0 if self.acquired is not None else self.image.GetSize()[2] - len(self.frames)

    @property
    def values(self) -> np.ndarray:
        """The values masks are drawn on: the acquired slices of an uneven stack, else the image."""
        return self.acquired.values if self.acquired is not None else sitk.GetArrayViewFromImage(self.image)

    @property
    def slice_ml(self) -> np.ndarray:
        """Volume of one voxel of each slice of ``values``, in mL (a sheared, tilted grid's voxels are smaller
        than the product of its spacings: what counts is the distance between slices along the normal)."""
        direction = np.reshape(self.image.GetDirection(), (3, 3))
        spacing = np.array(self.image.GetSpacing())
        if self.acquired is not None:
            return spacing[0] * spacing[1] * np.array(self.acquired.shares) / 1000.0
        voxel = abs(float(np.linalg.det(direction * spacing[None, :]))) / 1000.0
        return np.full(self.image.GetSize()[2], voxel)

    @property
    def voxel_ml(self) -> float:
        return float(self.slice_ml.mean())

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
