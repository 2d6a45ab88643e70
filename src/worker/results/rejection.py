"""The IHE IOCM rejection note: a Key Object Selection document titled "Rejected for Quality Reasons"
(DCM 113001) that retracts results a newer job has superseded, at every PACS that stored them."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from worker.models.spec import ModelSpec
from worker.results.content import contributing_equipment, device_observer
from worker.results.identity import OutputSettings, ResultIdentity, stable_uid

REJECTED_FOR_QUALITY_REASONS = hd.sr.CodedConcept("113001", "DCM", "Rejected for Quality Reasons")


def rejection_uids(identity: ResultIdentity) -> tuple[str, str]:
    """Series and SOP Instance UIDs of the note that a job with this identity sends (stable, like its SEG's)."""
    return stable_uid(identity.seg_sop_instance_uid, "rejection series"), \
        stable_uid(identity.seg_sop_instance_uid, "rejection instance")


def reference(sop_class_uid: str, sop_instance_uid: str, series_instance_uid: str, study: Dataset) -> Dataset:
    """What a rejection note needs of an object it rejects: its UIDs, with the patient and study of
    ``study`` (a source header of the same study). The object's own file is not read: it may be gone."""
    ds = Dataset()
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "SpecificCharacterSet"):
        if keyword in study:
            setattr(ds, keyword, study.data_element(keyword).value)  # type: ignore[union-attr]
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_class_uid, sop_instance_uid, series_instance_uid
    return ds


def build_rejection_note(rejected: Sequence[Dataset], spec: ModelSpec, identity: ResultIdentity,
                         settings: OutputSettings) -> hd.ko.KeyObjectSelectionDocument:
    """A note that references each of ``rejected`` (the superseded SEG and SR, as ``reference`` makes them)."""
    series_uid, sop_uid = rejection_uids(identity)
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=rejected,
        observer_device_context=device_observer(spec, identity, settings),
        description="superseded: the series grew after these results were made",
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=content,
        series_instance_uid=series_uid,
        series_number=settings.rejection_series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=settings.manufacturer,
        series_description=settings.rejection_series_description[:64],
        contributing_equipment=[contributing_equipment(spec, identity, settings)],
    )


