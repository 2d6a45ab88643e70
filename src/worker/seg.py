"""The DICOM Segmentation (BINARY, one segment per label present) on the exact source grid."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from worker.geometry import Volume
from worker.identity import SOFTWARE_VERSION, OutputSettings, ResultIdentity, stable_uid
from worker.modelspec import Code, LabelSpec, ModelSpec


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm(spec: ModelSpec) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=spec.name, family=codes.cid7162.ArtificialIntelligence,
                                              version=spec.version)


PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")


def contributing_equipment(spec: ModelSpec, identity: ResultIdentity,
                           settings: OutputSettings) -> hd.ContributingEquipment:
    """IHE AI Results: who processed the images. Its serial number is the device UID (also the SR's
    observer device), which changes whenever the model's weights do."""
    return hd.ContributingEquipment(
        manufacturer=settings.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=spec.name[:64],
        software_versions=[f"ainode {SOFTWARE_VERSION}", f"{spec.name} {spec.version}"],
        device_serial_number=identity.device_uid,
        station_name=settings.device_serial_number[:16],
        contribution_description=f"segmentation by {spec.name} {spec.version}"[:64],
    )


def tracking_uid(identity: ResultIdentity, label: LabelSpec) -> str:
    return stable_uid(identity.seg_sop_instance_uid, "segment", label.name)


def describe(spec: ModelSpec, label: LabelSpec, number: int, identity: ResultIdentity) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name,
        segmented_property_category=coded(label.category),
        segmented_property_type=coded(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm(spec),
        tracking_uid=tracking_uid(identity, label),
        tracking_id=label.name,
        anatomic_regions=[coded(label.anatomic_region)] if label.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )


def present_labels(spec: ModelSpec, labels: np.ndarray) -> list[LabelSpec]:
    """The model's labels found in the mask (one comparison each: a full histogram of a 300-slice mask
    costs ~0.5 s)."""
    return [label for label in spec.labels if np.any(labels == label.value)]


def numbered(labels: np.ndarray, present: list[LabelSpec]) -> np.ndarray:
    """The mask with segment numbers 1..n in place of the label values (usually they are the same), and
    0 for any value the model's labels do not describe."""
    if all(label.value == number for number, label in enumerate(present, start=1)) \
            and int(labels.max(initial=0)) <= len(present):
        return labels
    out = np.zeros_like(labels)
    for number, label in enumerate(present, start=1):
        out[labels == label.value] = number
    return out


TYPE2_SOURCE_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def prepare_sources(volume: Volume) -> None:
    """Make the in-memory source headers what highdicom needs: Type 2 patient and study attributes present
    (real scanners omit some), and one ImageOrientationPatient string for single-frame series whose
    orientations differ only in the last digits (geometry already checked them within 1e-4)."""
    datasets = volume.datasets
    for ds in datasets:
        for keyword in TYPE2_SOURCE_ATTRIBUTES:
            if keyword not in ds:
                setattr(ds, keyword, "")
    if not volume.multiframe:
        orientation = datasets[0].ImageOrientationPatient
        for ds in datasets[1:]:
            ds.ImageOrientationPatient = orientation


def build_segmentation(volume: Volume, labels: np.ndarray, spec: ModelSpec, identity: ResultIdentity,
                       settings: OutputSettings) -> hd.seg.Segmentation:
    """A BINARY SEG whose segments are the labels present, numbered 1..n in the model's label order."""
    prepare_sources(volume)
    present = present_labels(spec, labels)
    return hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=volume.in_source_order(numbered(labels, present)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[describe(spec, label, n, identity) for n, label in enumerate(present, start=1)],
        series_instance_uid=identity.seg_series_instance_uid,
        series_number=settings.seg_series_number,
        sop_instance_uid=identity.seg_sop_instance_uid,
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=spec.name[:64],
        software_versions=[f"ainode {SOFTWARE_VERSION}", f"{spec.name} {spec.version}"],  # type: ignore[arg-type]
        device_serial_number=settings.device_serial_number,
        content_label="AINODE",
        content_description=f"{spec.name} {spec.version}"[:64],
        content_creator_name="ainode^",
        series_description=settings.seg_series_description[:64],
        contributing_equipment=[contributing_equipment(spec, identity, settings)],
    )
