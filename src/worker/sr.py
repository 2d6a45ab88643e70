"""The TID 1500 Measurement Report (Comprehensive 3D SR): one volumetric group per SEG segment."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from worker.geometry import Volume
from worker.identity import OutputSettings, ResultIdentity
from worker.modelspec import LabelSpec, ModelSpec
from worker.seg import coded, contributing_equipment, present_labels, tracking_uid

MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
HOUNSFIELD_UNIT = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
ATTENUATION = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
PROCEDURE = {
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "MR": hd.sr.CodedConcept("25056-3", "LN", "MR unspecified body region"),
    "PT": hd.sr.CodedConcept("44136-0", "LN", "PET unspecified body region"),
}


def measure(volume: Volume, labels: np.ndarray, present: list[LabelSpec]) -> dict[str, dict[str, float]]:
    """Volume (mL), and for CT mean and standard deviation of HU, inside each present label."""
    values = None
    out = {}
    for label in present:
        mask = labels == label.value
        entry = {"volume_ml": float(mask.sum()) * volume.voxel_ml}
        if volume.modality == "CT":
            if values is None:
                values = sitk.GetArrayViewFromImage(volume.image)
            inside = values[mask]
            entry["mean"] = float(inside.mean())
            entry["std"] = float(inside.std())
        out[label.name] = entry
    return out


FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
FINDING_ABSENT = hd.sr.CodedConcept("373572006", "SCT", "Clinical finding absent")


def _observation_context(spec: ModelSpec, identity: ResultIdentity,
                         settings: OutputSettings) -> hd.sr.ObservationContext:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid, name=spec.name[:64], manufacturer_name=settings.manufacturer,
            model_name=spec.version[:64]),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _document(volume: Volume, evidence: list[Dataset], content: hd.sr.MeasurementReport, spec: ModelSpec,
              identity: ResultIdentity, settings: OutputSettings) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=[*evidence, *volume.datasets],
        content=content,
        series_instance_uid=identity.sr_series_instance_uid,
        series_number=settings.sr_series_number,
        sop_instance_uid=identity.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=settings.manufacturer,
        is_complete=True,
        series_description=settings.sr_series_description[:64],
        contributing_equipment=[contributing_equipment(spec, identity, settings)],
    )


def build_nothing_found_report(volume: Volume, spec: ModelSpec, identity: ResultIdentity,
                               settings: OutputSettings) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report that says the model found none of its labels (there is no SEG to reference)."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.sr_sop_instance_uid + ".1",
                                                     identifier="nothing found"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, FINDING_ABSENT)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec, identity, settings),
        procedure_reported=PROCEDURE.get(volume.modality, PROCEDURE["CT"]),
        imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport,
    )
    return _document(volume, [], report, spec, identity, settings)


def build_report(volume: Volume, labels: np.ndarray, seg: hd.seg.Segmentation, spec: ModelSpec,
                 identity: ResultIdentity, settings: OutputSettings) -> hd.sr.Comprehensive3DSR:
    present = present_labels(spec, labels)
    figures = measure(volume, labels, present)
    source_series = hd.sr.SourceSeriesForSegmentation(volume.datasets[0].SeriesInstanceUID)
    groups = []
    for number, label in enumerate(present, start=1):
        entry = figures[label.name]
        measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(entry["volume_ml"], 3), unit=MILLILITRE)]
        if "mean" in entry:
            measurements += [
                hd.sr.Measurement(name=ATTENUATION, value=round(entry["mean"], 2), unit=HOUNSFIELD_UNIT,
                                  derivation=codes.SCT.Mean),
                hd.sr.Measurement(name=ATTENUATION, value=round(entry["std"], 2), unit=HOUNSFIELD_UNIT,
                                  derivation=codes.SCT.StandardDeviation),
            ]
        site = label.anatomic_region or label.type
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(identity, label),
                                                         identifier=f"{label.name} {number}"),
            referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                       sop_instance_uid=seg.SOPInstanceUID,
                                                       segment_number=number, source_series=source_series),
            finding_type=coded(label.type),
            finding_category=coded(label.category),
            finding_sites=[hd.sr.FindingSite(coded(site))],
            measurements=measurements,
        ))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec, identity, settings),
        procedure_reported=PROCEDURE.get(volume.modality, PROCEDURE["CT"]),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    return _document(volume, [seg], report, spec, identity, settings)
