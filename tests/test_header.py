"""Header values read from raw elements equal pydicom's own conversion, whatever the encoding."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from conftest import SHARED_DATA, PhantomSeries
from worker.assembly import header

UNSIGNED = ("Rows", "Columns", "BitsAllocated", "PixelRepresentation")
DECIMALS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleIntercept")
TEXTS = ("ImageType", "SOPInstanceUID", "SOPClassUID")


def expected(ds: pydicom.Dataset, keyword: str) -> list[str]:
    value = ds[keyword].value
    values = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    return [str(v) for v in values]


def check(path: Path) -> None:
    raw, converted = pydicom.dcmread(path, defer_size=4096), pydicom.dcmread(path)
    for keyword in (*UNSIGNED, *DECIMALS, *TEXTS):
        if keyword not in converted:
            continue
        if keyword in UNSIGNED:
            assert header.unsigned(raw, keyword, -1) == converted[keyword].value, keyword
        elif keyword in DECIMALS:
            assert [float(v) for v in header.strings(raw, keyword)] == [float(v) for v in expected(converted, keyword)]
        else:
            assert header.strings(raw, keyword) == expected(converted, keyword), keyword


def test_explicit_and_implicit_little_endian(small_series: PhantomSeries, tmp_path: Path) -> None:
    check(small_series.paths[0])
    ds = pydicom.dcmread(small_series.paths[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "implicit.dcm").file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    check(tmp_path / "implicit.dcm")


@pytest.mark.parametrize("number", [1, 2, 3])  # explicit little, implicit little and explicit big endian
def test_real_siemens_headers_in_each_byte_order(number: int) -> None:
    check(SHARED_DATA / "dcm_qa_ts" / "In" / f"{number}.dcm")


def test_an_element_stored_as_un_or_already_converted_goes_through_pydicom(small_series: PhantomSeries) -> None:
    ds = pydicom.dcmread(small_series.paths[0], defer_size=4096)
    spacing = ds.get_item("PixelSpacing")
    assert isinstance(spacing, RawDataElement)
    ds._dict[Tag("PixelSpacing")] = spacing._replace(VR="UN")  # as some archives store standard attributes
    assert header.strings(ds, "PixelSpacing") == expected(pydicom.dcmread(small_series.paths[0]), "PixelSpacing")
    rows = ds.Rows  # converted now: a DataElement, no longer raw
    assert header.unsigned(ds, "Rows", -1) == rows


def test_absent_and_empty_values() -> None:
    ds = pydicom.Dataset()
    ds.SliceThickness = ""
    assert header.strings(ds, "SliceThickness") == [] and header.strings(ds, "PixelSpacing") == []
    assert header.number(ds, "RescaleSlope", 1.0) == 1.0 and header.unsigned(ds, "Rows", 7) == 7
    ds.RescaleIntercept = "-1024"
    assert header.number(ds, "RescaleIntercept", 0.0) == -1024.0
