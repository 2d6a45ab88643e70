"""Checking a received C-STORE request before anything is written: every value the node records is read
and validated here, so a dataset that cannot be stored is refused (0xC210, naming the element) with nothing
left on disk, and the write that follows cannot fail on the dataset's content."""

from __future__ import annotations

from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import UID

from db import ingest
from db.sop_classes import VOLUME_IMAGE_STORAGE
from db.storage import check_uid

_N = TypeVar("_N", int, float)


class BadDataset(ValueError):
    """The received dataset cannot be stored as it is; the message names the attribute and value."""


class WrongSOPClass(BadDataset):
    """The dataset's SOP Class UID is not the one the request names (answered 0xA900)."""


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    """A text attribute the database keeps; an element pydicom cannot decode is refused by name."""
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()[:limit]
    except Exception as exc:
        raise BadDataset(f"{keyword} cannot be decoded: {exc}") from exc


def _number(ds: Dataset, keyword: str, kind: type[_N]) -> _N | None:
    """A numeric attribute the database keeps: absent or not a number is None (the database keeps no
    value), but an element pydicom cannot decode is refused by name."""
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else kind(value)
    except (TypeError, ValueError):
        return None
    except Exception as exc:
        raise BadDataset(f"{keyword} cannot be decoded: {exc}") from exc


def _check_pixel_data(ds: Dataset, transfer_syntax: UID, sop_class_uid: str) -> None:
    """Refuse a truncated or inconsistent Pixel Data element; pixels themselves are decoded later.

    Objects without pixels (SR, KO, PR, RT…) are stored as they come: a PACS sends whole studies, and
    the worker records why they are not part of a volume.
    """
    if "PixelData" not in ds:
        if sop_class_uid in VOLUME_IMAGE_STORAGE:
            raise BadDataset("the dataset has no Pixel Data")
        return
    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if not isinstance(ds.get(keyword), int) or ds.get(keyword) <= 0:
            raise BadDataset(f"{keyword} {ds.get(keyword)!r} is missing or not a positive number")
    pixel_data = ds.PixelData
    if transfer_syntax.is_encapsulated:
        if len(pixel_data) < 8 or pixel_data[:4] != b"\xfe\xff\x00\xe0":
            raise BadDataset("encapsulated Pixel Data does not start with a Basic Offset Table item")
        return
    frames = _number(ds, "NumberOfFrames", int) or 1
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated // 8
    if len(pixel_data) < expected:
        raise BadDataset(f"Pixel Data is truncated: {len(pixel_data)} bytes, {expected} expected")


def series_of(ds: Dataset) -> tuple[str, str]:
    """Study and Series Instance UIDs, checked: what a request is about, found first."""
    return check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"), \
        check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")


def _texts(ds: Dataset, keyword: str, limit: int) -> str:
    """A multi-valued text attribute (ImageType) as the database keeps it: values joined by backslashes."""
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise BadDataset(f"{keyword} cannot be decoded: {exc}") from exc
    values = [] if value in (None, "") else [value] if isinstance(value, str) else list(value)
    return "\\".join(str(v).strip() for v in values)[:limit]


def check(ds: Dataset, affected_sop_instance_uid: object, affected_sop_class_uid: object,
          transfer_syntax: str) -> ingest.ReceivedInstance:
    """Everything about the request that must hold before it is stored, and what the database keeps of it
    (its file's path and size and the caller come after the write); ``BadDataset`` (or ``InvalidUID``)
    naming the attribute and value otherwise."""
    study, series = series_of(ds)
    sop_instance_uid = check_uid(affected_sop_instance_uid, "AffectedSOPInstanceUID")
    sop_class_uid = check_uid(affected_sop_class_uid, "AffectedSOPClassUID")
    if check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID") != sop_instance_uid:
        raise BadDataset(f"SOPInstanceUID {ds.SOPInstanceUID} differs from the request's {sop_instance_uid}")
    if check_uid(ds.get("SOPClassUID"), "SOPClassUID") != sop_class_uid:
        raise WrongSOPClass(f"SOPClassUID {ds.SOPClassUID} differs from the request's {sop_class_uid}")
    _check_pixel_data(ds, UID(transfer_syntax), sop_class_uid)
    return ingest.ReceivedInstance(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid, transfer_syntax_uid=str(transfer_syntax), modality=_text(ds, "Modality", 16),
        path="", size_bytes=0, calling_ae_title="",
        patient_id=_text(ds, "PatientID", 64), patient_name=_text(ds, "PatientName", 324),
        study_date=_text(ds, "StudyDate", 8), accession_number=_text(ds, "AccessionNumber", 16),
        study_description=_text(ds, "StudyDescription", 64), series_number=_number(ds, "SeriesNumber", int),
        series_description=_text(ds, "SeriesDescription", 64), instance_number=_number(ds, "InstanceNumber", int),
        body_part_examined=_text(ds, "BodyPartExamined", 16), protocol_name=_text(ds, "ProtocolName", 64),
        image_type=_texts(ds, "ImageType", 128), manufacturer=_text(ds, "Manufacturer", 64),
        slice_thickness=_number(ds, "SliceThickness", float))
