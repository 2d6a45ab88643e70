"""Phantom scans written as DICOM: a CT (or MR) Image Storage series, one file per slice, with real
geometry attributes, for the demo, the tests and the benchmarks to send to a node."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from training.phantom import Grid
from worker.results.identity import stable_uid


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes written into a phantom series."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    accession_number: str = "PHANTOM1"
    study_id: str = "1"
    series_number: int = 1

    @classmethod
    def from_seed(cls, seed: int) -> "StudyIdentity":
        src = f"ainode-phantom-{seed}"
        return cls(
            patient_id=f"PHANTOM-{seed:04d}",
            patient_name=f"Phantom^Seed{seed}",
            study_instance_uid=stable_uid(src, "study"),
            series_instance_uid=stable_uid(src, "series"),
            frame_of_reference_uid=stable_uid(src, "frame of reference"),
        )


def slice_uid(identity: StudyIdentity, k: int) -> str:
    """SOP Instance UID of slice ``k`` of a phantom series (callers need not read the files back)."""
    return stable_uid(identity.series_instance_uid, str(k))


def write_series(
    hu: np.ndarray, grid: Grid, identity: StudyIdentity, out_dir: Path, patient_position: str = "HFS",
    body_part: str = "CHEST", modality: str = "CT", series_description: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write the volume as a CT Image Storage series, one file per slice, and return the paths. With
    ``modality="MR"`` the volume holds MR signal (stored as it is, 0..4095) and the series is MR Image
    Storage; ``extra`` sets further attributes (an MR sequence's RepetitionTime, EchoTime, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    mr = modality == "MR"
    sop_class = MRImageStorage if mr else CTImageStorage
    description = series_description or f"Phantom {modality}"
    stored = np.clip(np.rint(hu if mr else hu + 1024.0), 0, 4095).astype(np.uint16)
    positions = grid.slice_positions()
    iop = [float(v) for v in np.concatenate([grid.direction[:, 0], grid.direction[:, 1]])]
    paths = []
    for k in range(grid.size[2]):
        sop_uid = slice_uid(identity, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.AccessionNumber = identity.accession_number
        ds.Modality = modality
        ds.Manufacturer = "ainode phantom"
        ds.ManufacturerModelName = "ainode phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"Phantom {modality}"
        ds.SeriesDescription = description
        ds.PatientName = identity.patient_name
        ds.PatientID = identity.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = body_part
        ds.SliceThickness = f"{grid.spacing[2]:g}"
        if not mr:
            ds.KVP = "120"
        ds.PatientPosition = patient_position
        ds.StudyInstanceUID = identity.study_instance_uid
        ds.SeriesInstanceUID = identity.series_instance_uid
        ds.StudyID = identity.study_id
        ds.SeriesNumber = identity.series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
        ds.ImageOrientationPatient = [round(v, 6) for v in iop]
        ds.FrameOfReferenceUID = identity.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = grid.size[1], grid.size[0]
        ds.PixelSpacing = [f"{grid.spacing[1]:g}", f"{grid.spacing[0]:g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if mr:
            ds.WindowCenter, ds.WindowWidth = "500", "1000"
        else:
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
            ds.WindowCenter, ds.WindowWidth = "-500", "1500"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = stored[k].tobytes()
        path = out_dir / f"{modality}{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


