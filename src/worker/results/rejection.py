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


def build_rejection_note(rejected: Sequence[Dataset], spec: ModelSpec, identity: ResultIdentity,
                         settings: OutputSettings) -> hd.ko.KeyObjectSelectionDocument:
    """A note that references each of ``rejected`` (the headers of the superseded SEG and SR)."""
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


