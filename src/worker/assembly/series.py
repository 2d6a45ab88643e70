"""Series → volume: which stored instances make the image volume, and assembling it.

Instances that are not part of a volume (other objects, localizers, colour images, mosaics, slices off
the main stack) are left out with a reason the job records; the rest go to ``geometry`` for their place
and to ``pixels`` for their values.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from db.errors import RejectedInput, reading_input
from db.sop_classes import VOLUME_IMAGE_STORAGE
from worker.assembly import header
from worker.assembly.geometry import MAX_GAP_RATIO, frames_of, main_stack, sort_frames
from worker.assembly.pixels import resample_stack, stack_values
from worker.assembly.volume import AcquiredSlices, Frame, Volume


def _why_not_a_slice(ds: Dataset) -> str | None:
    """Why an instance is not part of an image volume, or None when it may be."""
    meta = getattr(ds, "file_meta", None)
    sop_class = UID(header.string(ds, "SOPClassUID")
                    or (str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else "") or "unknown")
    if sop_class not in VOLUME_IMAGE_STORAGE:
        return f"a {sop_class.name or sop_class} object, not a CT, MR or PET image"
    image_type = [v.upper() for v in header.strings(ds, "ImageType")]
    if "LOCALIZER" in image_type:
        return "a localizer (ImageType LOCALIZER)"
    if "MOSAIC" in image_type:
        return "a Siemens mosaic (several slices tiled in one image, ImageType MOSAIC), which ainode does not split"
    if header.unsigned(ds, "SamplesPerPixel", 1) != 1:
        return f"a colour image ({ds.get('PhotometricInterpretation', 'SamplesPerPixel 3')})"
    return None


def _read_headers(paths: list[Path]) -> list[tuple[Path, Dataset]]:
    found: list[tuple[Path, Dataset]] = []
    for path in paths:
        with reading_input(f"stored file {path} cannot be opened", f"stored file {path.name} cannot be read as DICOM"):
            found.append((path, dcmread(path, defer_size=4096)))  # pixels are read when decoded
    return found


def select_frames(paths: list[Path]) -> tuple[list[Frame], list[str]]:
    """The frames that make up the series' image volume, and a reason for every instance left out."""
    frames: list[Frame] = []
    ignored: list[str] = []
    for path, ds in _read_headers(paths):
        reason = _why_not_a_slice(ds)
        if reason:
            ignored.append(f"{header.string(ds, 'SOPInstanceUID') or path.name}: {reason}")
            continue
        frames.extend(frames_of(ds, path))
    if not frames:
        raise RejectedInput("no image volume in the series: " + "; ".join(ignored[:3])
                            + (f" (and {len(ignored) - 3} more)" if len(ignored) > 3 else ""))
    frames, off_axis = main_stack(frames)
    return frames, ignored + off_axis


def assemble(paths: list[Path], min_slices: int = 1, max_missing: int = 0,
             max_gap_ratio: float = MAX_GAP_RATIO) -> Volume:
    """Read the stored files of one series into a volume with checked geometry.

    ``max_missing`` > 0 fills gaps of up to that many missing slices by linear interpolation (the SEG
    then covers only the acquired slices); by default a missing slice refuses the series. A stack whose
    slices are all there but unevenly spaced (no gap above ``max_gap_ratio`` median spacings) is resampled
    onto a regular grid for the model and keeps its acquired slices for the SEG.
    """
    if not paths:
        raise RejectedInput("the series has no stored instances")
    frames, ignored = select_frames(paths)
    multiframe = [f for f in frames if f.number is not None]
    if multiframe and (len(multiframe) != len(frames) or len({f.path for f in multiframe}) > 1):
        raise RejectedInput("the series mixes single-frame instances and multi-frame objects, or holds several "
                            "multi-frame objects; assemble one object at a time")
    stack = sort_frames(frames, min_slices, max_missing, max_gap_ratio)
    ordered = [frames[i] for i in stack.order]
    values = stack_values(ordered, stack.slots)
    acquired = None
    if stack.offsets is not None:
        acquired = AcquiredSlices(values, stack.offsets, tuple(float(v) for v in stack.slice_shares()))
        values = resample_stack(values, stack.offsets, stack.spacing)
    image = sitk.GetImageFromArray(values)
    stack.place(image, ordered[0])
    return Volume(image, tuple(ordered), tuple(ignored), tuple(stack.slots), acquired)


