"""Pixels of the source frames: decoded once per instance, rescaled per frame, stacked in slice order.

Geometry (which frame goes where) is decided in ``worker.assembly.geometry``; this module only fills the
slots. The frames' header datasets are never changed: pixels are read from the file beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from db.errors import reading_input
from worker.assembly import header
from worker.assembly.volume import Frame

_NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def _stored_values(ds: Dataset, path: Path) -> np.ndarray:
    """Stored values of every frame, (frames, rows, cols). Native little endian is read straight from
    the file at the element's offset (pydicom's general decoder costs ~3 ms a slice); everything else
    (compressed, big endian, deflated, colour) goes through pydicom, on a dataset read for that alone."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    allocated = header.unsigned(ds, "BitsAllocated", 0)
    stored = header.unsigned(ds, "BitsStored", allocated)
    frames = int(header.number(ds, "NumberOfFrames", 1) or 1)
    shape = (frames, header.unsigned(ds, "Rows", 0), header.unsigned(ds, "Columns", 0))
    if syntax in _NATIVE_LITTLE_ENDIAN and allocated in (8, 16, 32) and header.unsigned(ds, "SamplesPerPixel", 1) == 1:
        signed = header.unsigned(ds, "PixelRepresentation", 0) == 1
        dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
        count = int(np.prod(shape))
        raw = ds.get_item("PixelData", keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and syntax != DeflatedExplicitVRLittleEndian:
            # deferred, so not read yet: read it from the file at its offset (a deflated file has no such offset)
            if raw.length == 0xFFFFFFFF or raw.length < count * dtype.itemsize:
                raise ValueError(f"PixelData is {raw.length} bytes long; {shape} of {dtype} needs "
                                 f"{count * dtype.itemsize}")
            array = np.fromfile(path, dtype=dtype, count=count, offset=raw.value_tell)
            if array.size < count:
                raise ValueError(f"the file ends after {array.size} of the {count} values {shape} needs")
        elif raw is not None and raw.value is not None:  # small enough to have been read with the header
            array = np.frombuffer(raw.value, dtype=dtype, count=count)
        else:
            array = np.frombuffer(dcmread(path).PixelData, dtype=dtype, count=count)
        array = array.reshape(shape)
        if stored < allocated:
            shift = allocated - stored
            array = (array << shift) >> shift if signed else array & ((1 << stored) - 1)
        return array
    array = dcmread(path).pixel_array
    return array.reshape((-1, *array.shape[-2:]))


def _output_type(frames: list[Frame]) -> type:
    """int16 when every real value fits (CT with slope 1 and an integer intercept): half the memory of
    float32, and the model's resampling reads it directly."""
    ds = frames[0].dataset
    if any(f.slope != 1.0 or f.intercept != int(f.intercept) for f in frames):
        return np.float32
    bits = header.unsigned(ds, "BitsStored", header.unsigned(ds, "BitsAllocated", 16))
    signed = header.unsigned(ds, "PixelRepresentation", 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    shifts = [int(f.intercept) for f in frames]
    if low + min(shifts) >= -32768 and high + max(shifts) <= 32767:
        return np.int16
    return np.float32


def _fill(out: np.ndarray, instance: list[tuple[Frame, int]]) -> None:
    """Decode one instance and write each of its frames, rescaled, into its slot of ``out``."""
    frame = instance[0][0]
    with reading_input(f"stored file {frame.path} cannot be read",
                       f"the pixel data of instance {frame.name} cannot be decoded"):
        stored = _stored_values(frame.dataset, frame.path)
    for frame, slot in instance:
        values = stored[(frame.number or 1) - 1]
        if out.dtype == np.int16:
            np.add(values, np.int32(frame.intercept), out=out[slot], casting="unsafe")
        else:
            np.multiply(values, np.float32(frame.slope), out=out[slot], casting="unsafe")
            out[slot] += np.float32(frame.intercept)


def read_pixels(frames: list[Frame], slots: list[int]) -> sitk.Image:
    """Decode each instance once (pydicom: native, RLE, JPEG, JPEG-LS, JPEG 2000) and rescale every frame
    with its own slope and intercept, into one image in slice order (int16 or float32)."""
    return sitk.GetImageFromArray(stack_values(frames, slots))


def resample_stack(values: np.ndarray, offsets: tuple[float, ...], spacing: float) -> np.ndarray:
    """Slices at regular ``spacing`` along the stack from slices at ``offsets`` (mm from the first): each a
    linear mix of the two acquired slices around it, so the first and last are the acquired ones."""
    where = np.array(offsets)
    count = int(round(where[-1] / spacing)) + 1
    out = np.empty((count, *values.shape[1:]), dtype=values.dtype)
    for n in range(count):
        t = min(n * spacing, where[-1])
        k = min(int(np.searchsorted(where, t, side="right")) - 1, len(where) - 2)
        weight = (t - where[k]) / (where[k + 1] - where[k])
        if weight <= 1e-6 or weight >= 1 - 1e-6:
            out[n] = values[k if weight < 0.5 else k + 1]
            continue
        mixed = (1 - weight) * values[k].astype(np.float32) + weight * values[k + 1].astype(np.float32)
        out[n] = np.rint(mixed) if out.dtype == np.int16 else mixed
    return out


def stack_values(frames: list[Frame], slots: list[int]) -> np.ndarray:
    """The rescaled values of every frame in its slot (slices, rows, columns); missing slots interpolated."""
    first = frames[0].dataset
    rows, columns = header.unsigned(first, "Rows", 0), header.unsigned(first, "Columns", 0)
    out: np.ndarray = np.empty((slots[-1] + 1, rows, columns), dtype=_output_type(frames))
    instances: dict[int, list[tuple[Frame, int]]] = {}  # each instance decoded once, for all its frames
    for frame, slot in zip(frames, slots):
        instances.setdefault(id(frame.dataset), []).append((frame, slot))
    for instance in instances.values():
        _fill(out, instance)
    for before, after in zip(slots, slots[1:]):  # missing slices, when allowed: linear between neighbours
        for slot in range(before + 1, after):
            weight = (slot - before) / (after - before)
            mixed = (1 - weight) * out[before].astype(np.float32) + weight * out[after].astype(np.float32)
            out[slot] = np.rint(mixed) if out.dtype == np.int16 else mixed
    return out
