"""Content the SEG and the SR share: coded concepts, algorithm and equipment identification, tracking
UIDs, and the source headers both reference (as highdicom's ``content.py`` holds the parts of its objects)."""

from __future__ import annotations

import highdicom as hd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from worker.assembly.geometry import share_orientation
from worker.assembly.volume import Volume
from worker.models.spec import Code, LabelSpec, ModelSpec
from worker.results.identity import SOFTWARE_VERSION, OutputSettings, ResultIdentity, stable_uid

PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")
TYPE2_SOURCE_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "ReferringPhysicianName", "StudyID", "AccessionNumber")
_PIXEL_DATA = Tag("PixelData")
_FRAME_OF_REFERENCE = Tag("FrameOfReferenceUID")


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm(spec: ModelSpec) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=spec.name, family=codes.cid7162.ArtificialIntelligence,
                                              version=spec.version)


def software_versions(spec: ModelSpec, identity: ResultIdentity) -> list[str]:
    """ainode's version, the model's, and its weights (the start of their SHA-256: 64 characters at most)."""
    versions = [f"ainode {SOFTWARE_VERSION}", f"{spec.name} {spec.version}"[:64]]
    return versions + ([f"weights sha256:{identity.weights_digest[:40]}"] if identity.weights_digest else [])


def contributing_equipment(spec: ModelSpec, identity: ResultIdentity,
                           settings: OutputSettings) -> hd.ContributingEquipment:
    """IHE AI Results: who processed the images. Its serial number is the device UID (also the SR's
    observer device), which changes whenever the model's weights do."""
    return hd.ContributingEquipment(
        manufacturer=settings.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=spec.name[:64],
        software_versions=software_versions(spec, identity),
        device_serial_number=identity.device_uid,
        station_name=settings.device_serial_number[:16],
        contribution_description=f"segmentation by {spec.name} {spec.version}"[:64],
    )


def device_observer(spec: ModelSpec, identity: ResultIdentity, settings: OutputSettings) -> hd.sr.ObserverContext:
    """The model as the observer of an SR or KO: the same device UID as in Contributing Equipment."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid, name=spec.name[:64], manufacturer_name=settings.manufacturer,
            model_name=spec.version[:64]),
    )


def tracking_uid(identity: ResultIdentity, label: LabelSpec) -> str:
    """The UID that follows one segment from the SEG into the SR's measurement group."""
    return stable_uid(identity.seg_sop_instance_uid, "segment", label.name)


def source_headers(volume: Volume, frame_of_reference: str | None = None) -> list[Dataset]:
    """Copies of the source headers as highdicom needs them, the volume's own left untouched: without
    Pixel Data, with the Type 2 patient and study attributes present (real scanners omit some), and one
    ImageOrientationPatient value for single-frame series whose orientations differ only in the last
    digits (geometry already checked them within 1e-4). ``frame_of_reference``, when given, replaces the
    instances' FrameOfReferenceUIDs (several, merged because the geometry is one volume).

    The copies share their elements with the sources, so a change is a new element put in the copy's
    map (or an element deleted from it), never a value set on an element already there."""
    out = []
    for ds in volume.datasets:
        copy = Dataset(dict(ds.items()))
        copy.file_meta = ds.file_meta
        if _PIXEL_DATA in copy:
            del copy[_PIXEL_DATA]
        for keyword in TYPE2_SOURCE_ATTRIBUTES:
            if keyword not in copy:
                setattr(copy, keyword, "")  # absent, so a new element
        if frame_of_reference is not None:
            copy[_FRAME_OF_REFERENCE] = DataElement(_FRAME_OF_REFERENCE, "UI", frame_of_reference)
        out.append(copy)
    if not volume.multiframe:
        share_orientation(out)
    return out
