"""Geometry: the one place that decides where each source frame lies and how the frames make a grid.

Every source frame (a single-frame instance, or one frame of an Enhanced or Legacy Converted
multi-frame object, read from its functional groups) gets a position, an orientation, a pixel spacing
and its own rescale. Frames are sorted along the slice normal (never by InstanceNumber), the spacing
comes from every position (not the first two), and PatientPosition plays no part. What is clearly not
one volume is refused with a reason that names the instances and the problem, because a mask drawn on a
wrongly assembled volume would land on the wrong anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from db.errors import RejectedInput
from worker.assembly import header
from worker.assembly.volume import Frame

ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01  # fraction of the slice spacing a gap may differ from it
IN_PLANE_TOLERANCE_MM = 0.05
MAX_GAP_RATIO = 2.5  # default largest gap of an unevenly spaced stack, in median spacings
# An unevenly spaced stack is resampled for the model onto a regular grid no coarser than its smallest gap,
# nor finer than half its median spacing (a few overlapping slices must not make the grid huge).
FINEST_REGULAR_SPACING = 0.5
_ORIENTATION = Tag("ImageOrientationPatient")


def _floats(value: object, count: int, keyword: str, name: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        array = np.array([])
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise RejectedInput(f"instance {name} has no usable {keyword} ({value!r})")
    return array


def _group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """A functional group for frame ``index``: per-frame first, then shared."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > i and sequence in items[i] and items[i][sequence].value:
            return items[i][sequence][0]
    return None


def _rescale(item: Dataset | None, name: str) -> tuple[float, float]:
    if item is None:
        return 1.0, 0.0
    try:
        slope = header.number(item, "RescaleSlope", 1.0) or 1.0
        intercept = header.number(item, "RescaleIntercept", 0.0)
    except ValueError:
        raise RejectedInput(f"instance {name} has an unusable RescaleSlope or RescaleIntercept "
                            f"({header.strings(item, 'RescaleSlope')}, {header.strings(item, 'RescaleIntercept')})")
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise RejectedInput(f"instance {name} has a RescaleSlope of {slope} and a RescaleIntercept of {intercept}")
    return slope, intercept


def frames_of(ds: Dataset, path: Path) -> list[Frame]:
    """The frames of one instance, with their geometry from the header or the functional groups."""
    uid = header.string(ds, "SOPInstanceUID", path.name)
    try:
        count = int(header.number(ds, "NumberOfFrames", 1) or 1)
    except ValueError:
        raise RejectedInput(f"instance {uid} has NumberOfFrames {header.strings(ds, 'NumberOfFrames')}")
    if count == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        slope, intercept = _rescale(ds, uid)
        return [Frame(path, ds, None,
                      _floats(header.strings(ds, "ImagePositionPatient"), 3, "ImagePositionPatient", uid),
                      _floats(header.strings(ds, "ImageOrientationPatient"), 6, "ImageOrientationPatient", uid),
                      _floats(header.strings(ds, "PixelSpacing"), 2, "PixelSpacing", uid), slope, intercept)]
    frames = []
    for i in range(count):
        name = f"{uid} frame {i + 1}"
        position = _group(ds, i, "PlanePositionSequence")
        orientation = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise RejectedInput(f"instance {name} has no plane position, orientation or pixel measures in its "
                                "functional groups")
        transform = _group(ds, i, "PixelValueTransformationSequence")
        slope, intercept = _rescale(transform if transform is not None else ds, name)
        frames.append(Frame(path, ds, i + 1,
                            _floats(header.strings(position, "ImagePositionPatient"), 3, "ImagePositionPatient",
                                    name),
                            _floats(header.strings(orientation, "ImageOrientationPatient"), 6,
                                    "ImageOrientationPatient", name),
                            _floats(header.strings(measures, "PixelSpacing"), 2, "PixelSpacing", name),
                            slope, intercept))
    return frames


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


def _refuse_several_volumes(frames: list[Frame], distance: np.ndarray) -> None:
    """Several frames at each position of one object: time points, echoes or b-values, not one volume."""
    rounded = np.round(distance, 2)
    positions, counts = np.unique(rounded, return_counts=True)
    if len(positions) == 1 and len(frames) > 1:
        raise RejectedInput(f"all {len(frames)} images are at one position ({positions[0]:.2f} mm along the "
                            "normal): not a volume")
    if len(positions) > 1 and counts.min() > 1 and counts.min() == counts.max():
        names = sorted({f.name.split(" frame")[0] for f in frames})
        raise RejectedInput(f"{len(frames)} frames at {len(positions)} positions ({counts[0]} at each) in "
                            f"{', '.join(names[:3])}: several volumes in one series (time points, echoes or "
                            "b-values); not assembled as one volume")


def _matrix(ds: Dataset) -> tuple[int, int]:
    return header.unsigned(ds, "Rows", 0), header.unsigned(ds, "Columns", 0)


@dataclass(frozen=True)
class Stack:
    """How the sorted frames make a grid: their order, the grid's direction and spacing, and the slot
    (slice index) of each frame; slots without a frame are interpolated missing slices.

    An unevenly spaced stack (all slices present, gaps that differ) has ``offsets``: each frame's distance
    from the first along the stack direction. Its frames keep slots 0..n-1 (the acquired slices, where the
    SEG is drawn); ``spacing`` is then that of the regular grid the values are resampled onto for the model,
    whose first and last slices are the first and last frames."""

    order: list[int]
    direction: np.ndarray
    spacing: float
    slots: list[int]
    offsets: tuple[float, ...] | None = None
    normal_gaps: tuple[float, ...] = ()  # uneven stack: gaps between consecutive frames along the normal

    @property
    def regular_slices(self) -> int:
        return self.slots[-1] + 1 if self.offsets is None else int(round(self.offsets[-1] / self.spacing)) + 1

    def place(self, image: sitk.Image, first: Frame) -> None:
        """Give the (regular) image of the sorted frames its place in patient space (first frame = origin)."""
        image.SetSpacing((float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), self.spacing))
        image.SetOrigin(tuple(float(v) for v in first.position))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))

    def slice_shares(self) -> np.ndarray:
        """Each frame's share of the stack along the normal (mm): half the gaps on either side, the end
        frames a whole gap, so that a voxel's volume is its pixel area times its slice's share."""
        gaps = np.array(self.normal_gaps)
        if len(gaps) == 0:
            return np.full(len(self.order), self.spacing)
        return np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])


def _missing_slices(gaps: np.ndarray, step: float) -> np.ndarray:
    """Gaps that look like lost slices of an evenly spaced stack: a whole multiple (two or more) of the
    spacing with evenly spaced neighbours. A stack whose uneven gaps are all of this kind is an even stack
    with slices missing; any other unevenness is an unevenly spaced stack (sequential CT, variable pitch)."""
    even = np.abs(gaps - step) <= SPACING_TOLERANCE * step
    multiples = np.rint(gaps / step)
    whole = (multiples >= 2) & (np.abs(gaps - multiples * step) <= SPACING_TOLERANCE * step)
    neighbours = np.ones_like(even)
    neighbours[1:] &= even[:-1]
    neighbours[:-1] &= even[1:]
    return whole & neighbours


def _uneven_stack(frames: list[Frame], order: list[int], d: np.ndarray, gaps: np.ndarray, step: float,
                  max_gap_ratio: float, row: np.ndarray, col: np.ndarray) -> Stack:
    """All slices present, unevenly spaced: accepted when no gap passes ``max_gap_ratio`` median spacings."""
    k = int(np.argmax(gaps))
    if gaps[k] > max_gap_ratio * step:
        raise RejectedInput(f"uneven slice spacing: a gap of {gaps[k]:.2f} mm between {d[k]:.2f} and {d[k + 1]:.2f} mm "
                            f"along the normal (instance {frames[order[k + 1]].name}) is more than {max_gap_ratio:g} "
                            f"times the median spacing of {step:.2f} mm (worker.max_slice_gap_ratio): slices are "
                            "missing or the series is not one volume")
    ordered = np.array([frames[i].position for i in order])
    along = (ordered[-1] - ordered[0]) / (d[-1] - d[0])  # per mm along the normal: the stack direction
    expected = ordered[0] + np.outer(d - d[0], along)
    off_line = np.linalg.norm(ordered - expected, axis=1)
    if off_line.max() > IN_PLANE_TOLERANCE_MM + 0.01 * step:
        k = int(np.argmax(off_line))
        raise RejectedInput(f"instance {frames[order[k]].name} is {off_line[k]:.2f} mm off the line through the "
                            "other slice positions: the slices are shifted in plane unevenly, not one volume")
    unit = along / np.linalg.norm(along)
    offsets = (d - d[0]) * float(np.linalg.norm(along))
    target = max(float(gaps.min()), step / 2, FINEST_REGULAR_SPACING) * float(np.linalg.norm(along))
    spacing = float(offsets[-1] / max(1, int(np.ceil(offsets[-1] / target - 1e-6))))
    return Stack(order, np.stack([row, col, unit], axis=1), spacing, list(range(len(order))),
                 tuple(float(v) for v in offsets), tuple(float(g) for g in gaps))


def sort_frames(frames: list[Frame], min_slices: int, max_missing: int = 0,
                max_gap_ratio: float = MAX_GAP_RATIO) -> Stack:
    """Order of the frames along the normal, the direction matrix and the slice spacing.

    ``max_missing`` > 0 accepts gaps of up to that many missing slices, to be interpolated. A stack with
    all its slices but uneven gaps (none above ``max_gap_ratio`` median spacings) is accepted as uneven.
    The third column of the direction follows the stack, which is not the normal when the gantry was tilted.
    Raises ``RejectedInput`` for mixed matrices or orientations, several volumes in one object, repeated
    positions, unevenly shifted slices, missing slices, too large gaps and too few slices.
    """
    first = frames[0]
    iop = first.orientation
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise RejectedInput(f"instance {first.name}: ImageOrientationPatient {list(iop)} is not orthonormal")
    matrix = _matrix(first.dataset)
    for frame in frames:
        if _matrix(frame.dataset) != matrix:
            rows, columns = _matrix(frame.dataset)
            raise RejectedInput(f"instance {frame.name} is {rows}x{columns}, the series is {matrix[0]}x{matrix[1]}")
        if np.abs(frame.orientation - iop).max() > ORIENTATION_TOLERANCE:
            raise RejectedInput(f"instance {frame.name} has orientation {list(frame.orientation)}, the series "
                                f"{list(iop)}: more than one orientation in one series")
        if np.abs(frame.pixel_spacing - first.pixel_spacing).max() > 1e-4:
            raise RejectedInput(f"instance {frame.name} has PixelSpacing {list(frame.pixel_spacing)}, the series "
                                f"{list(first.pixel_spacing)}")
    points = np.array([frame.position for frame in frames])
    distance = points @ normal
    _refuse_several_volumes(frames, distance)
    order = [int(i) for i in np.argsort(distance, kind="stable")]
    if len(order) < min_slices:
        raise RejectedInput(f"the series has {len(order)} slices; the model needs at least {min_slices}")
    direction = np.stack([row, col, normal], axis=1)
    if len(order) == 1:
        return Stack(order, direction, _single_slice_spacing(first.dataset), [0])
    d = distance[order]
    gaps = np.diff(d)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise RejectedInput(f"instances {frames[order[k]].name} and {frames[order[k + 1]].name} are at the same "
                            f"position ({d[k]:.2f} mm along the normal): not one volume")
    step = float(np.median(gaps))
    multiples = np.rint(gaps / step)
    uneven = np.abs(gaps - step) > SPACING_TOLERANCE * step
    if np.any(uneven & ~_missing_slices(gaps, step)):
        return _uneven_stack(frames, order, d, gaps, step, max_gap_ratio, row, col)
    fillable = (np.abs(gaps - multiples * step) <= SPACING_TOLERANCE * step) & (multiples - 1 <= max_missing)
    if np.any(uneven & ~fillable):
        k = int(np.argmax(uneven & ~fillable))
        raise RejectedInput(f"uneven slice spacing: {gaps[k]:.2f} mm between {d[k]:.2f} and {d[k + 1]:.2f} mm "
                            f"along the normal where {step:.2f} mm is expected (missing slice?) at instance "
                            f"{frames[order[k + 1]].name}")
    slots = [0, *np.cumsum(multiples).astype(int).tolist()]
    ordered = points[order]
    stack = (ordered[-1] - ordered[0]) / slots[-1]
    expected = ordered[0] + np.outer(np.array(slots), stack)
    off_line = np.linalg.norm(ordered - expected, axis=1)
    if off_line.max() > IN_PLANE_TOLERANCE_MM + 0.01 * step:
        k = int(np.argmax(off_line))
        raise RejectedInput(f"instance {frames[order[k]].name} is {off_line[k]:.2f} mm off the line through the "
                            "other slice positions: the slices are shifted in plane unevenly, not one volume")
    # A tilted gantry stacks slices along a direction that is not their normal: the acquired grid is
    # sheared, and its third axis follows the stack so every voxel stays on its acquired slice.
    direction = np.stack([row, col, stack / np.linalg.norm(stack)], axis=1)
    return Stack(order, direction, float(np.linalg.norm(stack)), slots)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]


def main_stack(frames: list[Frame]) -> tuple[list[Frame], list[str]]:
    """Frames of the orientation most frames share; the others are ignored when the choice is clear."""
    groups: list[list[Frame]] = []
    for frame in frames:
        for group in groups:
            if np.abs(group[0].orientation - frame.orientation).max() <= ORIENTATION_TOLERANCE:
                group.append(frame)
                break
        else:
            groups.append([frame])
    if len(groups) == 1:
        return frames, []
    groups.sort(key=len, reverse=True)
    main, rest = groups[0], [f for g in groups[1:] for f in g]
    if len(main) < 2 * len(rest) or len(main) < 3:
        sizes = ", ".join(f"{len(g)} with orientation {_rounded(g[0].orientation)}" for g in groups)
        raise RejectedInput(f"more than one orientation in one series and no clear main stack ({sizes})")
    notes = [f"{f.name}: orientation {_rounded(f.orientation)} differs from the main stack's" for f in rest]
    return main, notes


def share_orientation(headers: list[Dataset]) -> None:
    """Give copies of single-frame source headers the first one's ImageOrientationPatient, for writers
    (highdicom) that compare the strings: ``sort_frames`` already found them equal within 1e-4. Each copy
    gets an element of its own, since the first one's is also its source's."""
    if headers and _ORIENTATION in headers[0]:
        first = headers[0][_ORIENTATION]
        for ds in headers[1:]:
            ds[_ORIENTATION] = DataElement(_ORIENTATION, first.VR, list(first.value))


def tilt_degrees(image: sitk.Image) -> float:
    """Angle between the stack direction and the slice normal (0 for an ordinary series)."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    normal = np.cross(direction[:, 0], direction[:, 1])
    return float(np.degrees(np.arccos(np.clip(abs(normal @ direction[:, 2]), 0.0, 1.0))))
