"""Header values as assembly reads them: straight from pydicom's raw (not yet converted) elements.

Assembling a series reads about fifteen values from each of hundreds of headers. pydicom's general
conversion costs ~40 µs an element (hooks, validation, value objects); the few VRs read here are plain
ASCII text or a little- or big-endian unsigned short, which take ~2 µs to parse from the raw bytes.
Anything else (an element already converted, a VR the standard does not give the attribute, such as UN)
goes through pydicom, so the values are always pydicom's.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})


def _raw(ds: Dataset, keyword: str) -> RawDataElement | None:
    element = ds.get_item(keyword, keep_deferred=True)
    return element if isinstance(element, RawDataElement) and element.value is not None else None


def strings(ds: Dataset, keyword: str) -> list[str]:
    """The values of a text attribute (DS, IS, CS, UI…), [] when absent or empty."""
    raw = _raw(ds, keyword)
    if raw is not None and (raw.VR is None or raw.VR in _TEXT_VRS):
        text = raw.value.decode("ascii", "replace").strip(" \x00")  # type: ignore[union-attr]
        return [v.strip(" \x00") for v in text.split("\\")] if text else []
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def string(ds: Dataset, keyword: str, default: str = "") -> str:
    values = strings(ds, keyword)
    return values[0] if values else default


def number(ds: Dataset, keyword: str, default: float) -> float:
    """A DS or IS value; ``default`` when absent or empty. Raises ValueError for text that is no number."""
    values = strings(ds, keyword)
    return float(values[0]) if values and values[0] else default


def unsigned(ds: Dataset, keyword: str, default: int) -> int:
    """A US (or IS) value such as Rows or BitsAllocated; ``default`` when absent or empty."""
    raw = _raw(ds, keyword)
    if raw is not None and raw.VR in (None, "US") and raw.length == 2:
        return int.from_bytes(raw.value, "little" if raw.is_little_endian else "big")  # type: ignore[arg-type]
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return int(value)
