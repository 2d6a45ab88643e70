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


def stacked(volume: Volume, sources: list[Dataset],
            findings: Findings) -> tuple[np.ndarray, list[hd.PlanePositionSequence]]:
    """The (frames, rows, columns, segments) boolean stack of the source frames where any segment is
    present (the first frame when none is, so that the stack is never empty), and their plane positions."""
    ordered = volume.in_source_order(findings.labels)
    values = sorted({v for f in findings.present for v in f.label.mask_values})
    frames = np.flatnonzero(np.isin(ordered, values).any(axis=(1, 2))) if values else np.array([], int)
    if not frames.size:
        frames = np.array([0])
    planes = ordered[frames]
    stack = np.stack([segment_mask(planes, f.label) for f in findings.present], axis=-1)
    positions = (hd.utils.get_plane_positions_of_image(sources[0]) if volume.multiframe
                 else hd.utils.get_plane_positions_of_series(sources))
    return stack, [positions[i] for i in frames]


def build_segmentation(volume: Volume, sources: list[Dataset], findings: Findings, spec: ModelSpec,
                       identity: ResultIdentity, settings: OutputSettings, *,
                       other_sources: Sequence[Dataset] = ()) -> hd.seg.Segmentation:
    """A BINARY SEG whose segments are the labels found, numbered 1..n in the model's label order.
    ``sources`` are the source headers as ``content.source_headers`` prepares them: the series whose grid
    the frames lie on. ``other_sources``, the headers of the other series the model read (its other input
    channels), are referenced too (Referenced Series Sequence, one item per series)."""
    positions: list[hd.PlanePositionSequence] | None = None
    if overlapping(findings):
        pixels, positions = stacked(volume, sources, findings)
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
        plane_positions=positions,
        further_source_images=list(other_sources) or None,
    )
