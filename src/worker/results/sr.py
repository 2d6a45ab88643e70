"""The TID 1500 Measurement Report (Comprehensive 3D SR): one volumetric group per SEG segment.

A model that read several series (its input channels) gets every one of them referenced: each instance
in the evidence (Current Requested Procedure Evidence Sequence, grouped by series) and in the report's
Image Library (TID 1600, one group per series); the segments' "Source series for segmentation" stays the
series whose grid the SEG lies on."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from worker.models.spec import LabelSpec, ModelSpec
from worker.results.content import coded, contributing_equipment, device_observer, tracking_uid
from worker.results.findings import Findings
from worker.results.identity import OutputSettings, ResultIdentity

MILLILITRE = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
HOUNSFIELD_UNIT = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
ATTENUATION = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
PROCEDURE = {
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
    "MR": hd.sr.CodedConcept("25056-3", "LN", "MR unspecified body region"),
    "PT": hd.sr.CodedConcept("44136-0", "LN", "PET unspecified body region"),
}


LATERALITY = {("SCT", "7771000"), ("SCT", "24028007"), ("SCT", "51440002"), ("SCT", "66459002")}  # CID 244
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
FINDING_ABSENT = hd.sr.CodedConcept("373572006", "SCT", "Clinical finding absent")


def _observation_context(spec: ModelSpec, identity: ResultIdentity,
                         settings: OutputSettings) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=device_observer(spec, identity, settings))


def _document(sources: list[Dataset], evidence: list[Dataset], content: hd.sr.MeasurementReport,
              spec: ModelSpec, identity: ResultIdentity, settings: OutputSettings,
              other_sources: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    return hd.sr.Comprehensive3DSR(
        evidence=[*evidence, *sources, *other_sources],
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


def _library(sources: list[Dataset], other_sources: Sequence[Dataset]) -> list[Dataset] | None:
    """The images of every input series for the Image Library, when there are several series (a report
    on one series keeps the shape it always had)."""
    return [*sources, *other_sources] if other_sources else None


def _procedure(sources: list[Dataset]) -> hd.sr.CodedConcept:
    return PROCEDURE.get(str(sources[0].get("Modality", "")), PROCEDURE["CT"])


def build_nothing_found_report(sources: list[Dataset], spec: ModelSpec, identity: ResultIdentity,
                               settings: OutputSettings, *,
                               other_sources: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report that says the model found none of its labels (there is no SEG to reference)."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.sr_sop_instance_uid + ".1",
                                                     identifier="nothing found"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, FINDING_ABSENT)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec, identity, settings),
        procedure_reported=_procedure(sources),
        imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=_library(sources, other_sources),
    )
    return _document(sources, [], report, spec, identity, settings, other_sources)


def _laterality(label: LabelSpec) -> hd.sr.CodedConcept | None:
    """A label's modifier when it is a laterality (CID 244: left, right, bilateral, unilateral)."""
    modifier = label.modifier
    if modifier is None or (modifier.scheme, modifier.value) not in LATERALITY:
        return None
    return coded(modifier)


def build_report(sources: list[Dataset], findings: Findings, seg: hd.seg.Segmentation, spec: ModelSpec,
                 identity: ResultIdentity, settings: OutputSettings, *,
                 other_sources: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """One volumetric group per SEG segment: volume, and for CT mean and SD of HU, with its finding codes."""
    source_series = hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)
    ct = str(sources[0].get("Modality", "")) == "CT"
    groups = []
    for finding in findings.present:
        label = finding.label
        measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(finding.volume_ml, 3), unit=MILLILITRE)]
        if ct:
            measurements += [
                hd.sr.Measurement(name=ATTENUATION, value=round(finding.mean, 2), unit=HOUNSFIELD_UNIT,
                                  derivation=codes.SCT.Mean),
                hd.sr.Measurement(name=ATTENUATION, value=round(finding.std, 2), unit=HOUNSFIELD_UNIT,
                                  derivation=codes.SCT.StandardDeviation),
            ]
        site = label.anatomic_region or label.type
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(identity, label),
                                                         identifier=f"{label.name} {finding.segment_number}"),
            referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                       sop_instance_uid=seg.SOPInstanceUID,
                                                       segment_number=finding.segment_number,
                                                       source_series=source_series),
            finding_type=coded(label.type),
            finding_category=coded(label.category),
            finding_sites=[hd.sr.FindingSite(coded(site), laterality=_laterality(label))],
            measurements=measurements,
        ))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec, identity, settings),
        procedure_reported=_procedure(sources),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=_library(sources, other_sources),
    )
    return _document(sources, [seg], report, spec, identity, settings, other_sources)
