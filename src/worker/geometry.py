"""Series → volume: the one place that decides how stored instances become a 3D image.

Slices are sorted along the slice normal (never by InstanceNumber), the spacing comes from every
position (not the first two), the rescale of each slice is applied to that slice, and PatientPosition
plays no part. What is clearly not one volume is refused with a reason that names the instances and the
problem, because a mask drawn on a wrongly assembled volume would land on the wrong anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset

from db.errors import RejectedInput, TransientFailure

ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01  # fraction of the slice spacing a gap may differ from it
IN_PLANE_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class Volume:
    """A 3D image (HU or the modality's real values) and, for each of its slices, the source instance.

    ``datasets[k]`` is the header of the instance whose pixels are slice k of ``image``.
    """

    image: sitk.Image
    datasets: tuple[Dataset, ...]
    paths: tuple[Path, ...]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.image.GetSpacing())) / 1000.0

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", ""))


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.array([])
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise RejectedInput(f"instance {name} has no usable {keyword} ({value!r})")
    return array


def _describe(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "?"))


def read_headers(paths: list[Path]) -> list[Dataset]:
    headers = []
    for path in paths:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except OSError as exc:
            raise TransientFailure(f"stored file {path} cannot be opened: {exc.strerror or exc}") from exc
        except Exception as exc:
            raise RejectedInput(f"stored file {path.name} cannot be read as DICOM: {exc}") from exc
    return headers


def _single_slice_spacing(ds: Dataset) -> float:
    """A lone slice has no neighbour: its extent along the normal is what the header says."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return 1.0


def sort_slices(headers: list[Dataset], min_slices: int) -> tuple[list[int], np.ndarray, float]:
    """Order of the slices along the normal, the direction matrix and the slice spacing.

    Raises ``RejectedInput`` for multi-frame objects, mixed matrices or orientations, repeated
    positions, sheared stacks (gantry tilt), uneven gaps (missing slices) and too few slices.
    """
    for ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise RejectedInput(f"instance {_describe(ds)} is a multi-frame object; this version assembles "
                                "single-frame series only")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise RejectedInput(f"instance {_describe(ds)} is a colour image (SamplesPerPixel "
                                f"{ds.SamplesPerPixel}), not a volume slice")
    first = headers[0]
    iop = _floats(first, "ImageOrientationPatient", 6, _describe(first))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise RejectedInput(f"instance {_describe(first)}: ImageOrientationPatient {list(iop)} is not orthonormal")
    matrix = (first.get("Rows"), first.get("Columns"))
    spacing = _floats(first, "PixelSpacing", 2, _describe(first))
    positions = []
    for ds in headers:
        name = _describe(ds)
        if (ds.get("Rows"), ds.get("Columns")) != matrix:
            raise RejectedInput(f"instance {name} is {ds.get('Rows')}x{ds.get('Columns')}, the series is "
                                f"{matrix[0]}x{matrix[1]}")
        other = _floats(ds, "ImageOrientationPatient", 6, name)
        if np.abs(other - iop).max() > ORIENTATION_TOLERANCE:
            raise RejectedInput(f"instance {name} has orientation {list(other)}, the series {list(iop)}: "
                                "more than one orientation in one series")
        if np.abs(_floats(ds, "PixelSpacing", 2, name) - spacing).max() > 1e-4:
            raise RejectedInput(f"instance {name} has PixelSpacing {list(ds.PixelSpacing)}, the series "
                                f"{list(spacing)}")
        positions.append(_floats(ds, "ImagePositionPatient", 3, name))
    points = np.array(positions)
    distance = points @ normal
    order = [int(i) for i in np.argsort(distance, kind="stable")]
    if len(order) < min_slices:
        raise RejectedInput(f"the series has {len(order)} slices; the model needs at least {min_slices}")
    d = distance[order]
    gaps = np.diff(d)
    if len(order) == 1:
        return order, np.stack([row, col, normal], axis=1), _single_slice_spacing(first)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise RejectedInput(f"instances {_describe(headers[order[k]])} and {_describe(headers[order[k + 1]])} "
                            f"are at the same position ({d[k]:.2f} mm along the normal): not one volume")
    step = float(np.median(gaps))
    uneven = np.abs(gaps - step) > SPACING_TOLERANCE * step
    if np.any(uneven):
        k = int(np.argmax(uneven))
        raise RejectedInput(f"uneven slice spacing: {gaps[k]:.2f} mm between {d[k]:.2f} and {d[k + 1]:.2f} mm "
                            f"along the normal where {step:.2f} mm is expected (missing slice?) at instance "
                            f"{_describe(headers[order[k + 1]])}")
    offsets = points[order] - points[order[0]]
    shear = offsets - np.outer(offsets @ normal, normal)
    if np.abs(shear).max() > IN_PLANE_TOLERANCE_MM + 1e-3 * float(np.abs(d[-1] - d[0])):
        raise RejectedInput(f"the slices are shifted in plane by up to {np.abs(shear).max():.1f} mm along the "
                            "stack (gantry tilt or a sheared series); not supported in this version")
    direction = np.stack([row, col, normal], axis=1)
    return order, direction, step


def assemble(paths: list[Path], min_slices: int = 1) -> Volume:
    """Read the stored files of one series into a volume with checked geometry."""
    if not paths:
        raise RejectedInput("the series has no stored instances")
    headers = read_headers(paths)
    order, direction, step = sort_slices(headers, min_slices)
    ordered = [paths[i] for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ordered])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise RejectedInput(f"the pixel data of the series cannot be decoded: {str(exc).strip().splitlines()[-1]}") from exc
    first = headers[order[0]]
    pixel = [float(v) for v in first.PixelSpacing]
    image.SetSpacing((pixel[1], pixel[0], step))
    image.SetOrigin(tuple(float(v) for v in first.ImagePositionPatient))
    image.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    return Volume(image, tuple(headers[i] for i in order), tuple(ordered))
