"""The DICOM Segmentation: BINARY, one segment per label found, on the exact source grid.

Segments that share no label-map value go to highdicom as one label map (numbered 1..n), which costs no
more memory than the mask. Overlapping segments (BraTS's nested regions) cannot: they go as a
(frames, rows, columns, segments) boolean stack of only the frames where a segment is present, each frame
placed by its source plane position, so a large series with a small finding stays small."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from worker.assembly.volume import Volume
from worker.models.spec import ModelSpec
from worker.results.content import algorithm, coded, contributing_equipment, software_versions, tracking_uid
from worker.results.findings import Findings, LabelFinding, overlapping, segment_mask
from worker.results.identity import OutputSettings, ResultIdentity


def describe(spec: ModelSpec, finding: LabelFinding, identity: ResultIdentity) -> hd.seg.SegmentDescription:
    label = finding.label
    segment = hd.seg.SegmentDescription(
        segment_number=finding.segment_number,
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
    if label.modifier is not None:  # laterality and the like qualify the property type (PS3.3 C.8.20.2)
        segment.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            coded(label.modifier)]
    return segment


def numbered(findings: Findings) -> np.ndarray:
    """The mask with segment numbers 1..n in place of the label values (usually they are the same), and
    0 for any value the model's labels do not describe. Only for segments that do not overlap."""
    labels = findings.labels
    if all(f.label.values is None and f.label.value == f.segment_number for f in findings.present) \
            and int(labels.max(initial=0)) <= len(findings.present):
        return labels
    out = np.zeros_like(labels)
    for finding in findings.present:
        out[segment_mask(labels, finding.label)] = finding.segment_number
    return out


def stacked(volume: Volume, findings: Findings) -> np.ndarray:
    """The (frames, rows, columns, segments) boolean stack of every source frame, for segments that overlap;
    highdicom leaves out the frames where a segment is absent, so the SEG holds only those it is in. One
    byte a voxel a segment: only models whose segments overlap (a few regions, an MR volume) come here."""
    ordered = volume.in_source_order(findings.labels)
    return np.stack([segment_mask(ordered, f.label) for f in findings.present], axis=-1)


def build_segmentation(volume: Volume, sources: list[Dataset], findings: Findings, spec: ModelSpec,
                       identity: ResultIdentity, settings: OutputSettings, *,
                       other_sources: Sequence[Dataset] = ()) -> hd.seg.Segmentation:
    """A BINARY SEG whose segments are the labels found, numbered 1..n in the model's label order.
    ``sources`` are the source headers as ``content.source_headers`` prepares them: the series whose grid
    the frames lie on. ``other_sources``, the headers of the other series the model read (its other input
    channels), are referenced too (Referenced Series Sequence, one item per series)."""
    if overlapping(findings):
        pixels = stacked(volume, findings)
    else:
        pixels = volume.in_source_order(numbered(findings))
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[describe(spec, finding, identity) for finding in findings.present],
        series_instance_uid=identity.seg_series_instance_uid,
        series_number=settings.seg_series_number,
        sop_instance_uid=identity.seg_sop_instance_uid,
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=spec.name[:64],
        software_versions=software_versions(spec, identity),  # type: ignore[arg-type]
        device_serial_number=settings.device_serial_number,
        content_label="AINODE",
        content_description=f"{spec.name} {spec.version}"[:64],
        content_creator_name="ainode^",
        series_description=settings.seg_series_description[:64],
        contributing_equipment=[contributing_equipment(spec, identity, settings)],
        further_source_images=list(other_sources) or None,
    )
