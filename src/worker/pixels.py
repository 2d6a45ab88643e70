"""Pixels of the source frames: decoded once per instance, rescaled per frame, stacked in slice order.

Geometry (which frame goes where) is decided in ``worker.geometry``; this module only fills the slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from db.errors import RejectedInput

if TYPE_CHECKING:
    from worker.geometry import Frame


_NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def _stored_values(ds: Dataset) -> np.ndarray:
    """Stored values of every frame, (frames, rows, cols). Native little endian is read straight from
    the bytes (pydicom's general decoder costs ~3 ms a slice); everything else goes through pydicom."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = (frames, int(ds.Rows), int(ds.Columns))
    if syntax in _NATIVE_LITTLE_ENDIAN and allocated in (8, 16, 32) and int(ds.get("SamplesPerPixel", 1)) == 1:
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
        count = int(np.prod(shape))
        array = np.frombuffer(ds.PixelData, dtype=dtype, count=count).reshape(shape)
        if stored < allocated:
            shift = allocated - stored
            array = (array << shift) >> shift if signed else array & ((1 << stored) - 1)
        return array
    array = ds.pixel_array
    return array.reshape((-1, *array.shape[-2:]))


def _output_type(frames: list[Frame]) -> type:
    """int16 when every real value fits (CT with slope 1 and an integer intercept): half the memory of
    float32, and the model's resampling reads it directly."""
    ds = frames[0].dataset
    if any(f.slope != 1.0 or f.intercept != int(f.intercept) for f in frames):
        return np.float32
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    shifts = [int(f.intercept) for f in frames]
    if low + min(shifts) >= -32768 and high + max(shifts) <= 32767:
        return np.int16
    return np.float32


def read_pixels(frames: list[Frame], slots: list[int]) -> sitk.Image:
    """Decode each instance once (pydicom: native, RLE, JPEG, JPEG-LS, JPEG 2000) and rescale every frame
    with its own slope and intercept, into one array in slice order (int16 or float32)."""
    first = frames[0].dataset
    out = np.empty((slots[-1] + 1, int(first.Rows), int(first.Columns)), dtype=_output_type(frames))
    multiframe: dict[int, np.ndarray] = {}  # decoded once, used for each of its frames
    for k, frame in enumerate(frames):
        key = id(frame.dataset)
        try:
            stored = multiframe.get(key)
            if stored is None:
                stored = _stored_values(frame.dataset)
                if frame.number is not None:
                    multiframe[key] = stored
                else:
                    del frame.dataset.PixelData  # the image keeps the pixels; results need only the header
        except Exception as exc:
            raise RejectedInput(f"the pixel data of instance {frame.name} cannot be decoded: {exc}") from exc
        values, slot = stored[(frame.number or 1) - 1], slots[k]
        if out.dtype == np.int16:
            np.add(values, np.int32(frame.intercept), out=out[slot], casting="unsafe")
        else:
            np.multiply(values, np.float32(frame.slope), out=out[slot], casting="unsafe")
            out[slot] += np.float32(frame.intercept)
    for before, after in zip(slots, slots[1:]):  # missing slices, when allowed: linear between neighbours
        for slot in range(before + 1, after):
            weight = (slot - before) / (after - before)
            mixed = (1 - weight) * out[before].astype(np.float32) + weight * out[after].astype(np.float32)
            out[slot] = np.rint(mixed) if out.dtype == np.int16 else mixed
    for frame in frames:
        if "PixelData" in frame.dataset:
            del frame.dataset.PixelData
    return sitk.GetImageFromArray(out)
