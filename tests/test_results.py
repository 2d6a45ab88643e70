"""SEG and SR built from a phantom's truth: read back with highdicom, frames on the source slices.

The bundled model has one label; these tests build objects of two (a model file of their own: the lung,
and a "lesion", a ball drawn inside it), so that segment numbering, colours and groups are tested too."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from conftest import PhantomSeries
from db.storage import write_atomic
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.spec import ModelSpec, load_spec
from worker.results.content import source_headers
from worker.results.findings import find
from worker.results.identity import OutputSettings, ResultIdentity, result_identity
from worker.results.seg import build_segmentation as build_seg
from worker.results.sr import build_report as build_sr


def build_segmentation(volume: Volume, labels: np.ndarray, spec: ModelSpec, identity: ResultIdentity,
                       settings: OutputSettings) -> hd.seg.Segmentation:
    return build_seg(volume, source_headers(volume), find(volume, labels, spec), spec, identity, settings)


def build_report(volume: Volume, labels: np.ndarray, seg: hd.seg.Segmentation, spec: ModelSpec,
                 identity: ResultIdentity, settings: OutputSettings) -> hd.sr.Comprehensive3DSR:
    return build_sr(source_headers(volume), find(volume, labels, spec), seg, spec, identity, settings)


def save_atomic(dataset: hd.SOPClass, path: Path) -> None:
    write_atomic(path, lambda fh: dataset.save_as(fh, enforce_file_format=True))


LESION = """
[[labels]]
value = 2
name = "Lesion"
category = { scheme = "SCT", value = "49755003", meaning = "Morphologically Altered Structure" }
type = { scheme = "SCT", value = "52988006", meaning = "Lesion" }
anatomic_region = { scheme = "SCT", value = "39607008", meaning = "Lung" }
color = [241, 214, 145]
fill_holes = true
"""


def two_label_spec(folder: Path) -> ModelSpec:
    """The demo model's file with a second label, Lesion (value 2)."""
    from worker.models.spec import DEMO_MODEL

    path = folder / "model.toml"
    path.write_text(DEMO_MODEL.read_text() + LESION)
    return load_spec(path)


def with_lesion(truth: np.ndarray, radius: int = 6) -> np.ndarray:
    """The lung truth with a ball of label 2 (voxels) around the lung's deepest point."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(truth == 1)
    centre = np.unravel_index(int(np.argmax(depth)), truth.shape)
    grid = np.ogrid[tuple(slice(0, n) for n in truth.shape)]
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return np.where(ball & (truth == 1), 2, truth).astype(np.uint8)


@pytest.fixture(scope="module")
def built(small_series: PhantomSeries, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec = two_label_spec(tmp_path_factory.mktemp("model"))
    volume = assemble(small_series.paths, spec.min_slices)
    labels = with_lesion(small_series.case.labels)
    identity = result_identity(spec, "digest", [str(ds.SOPInstanceUID) for ds in volume.datasets])
    settings = OutputSettings(seg_series_number=77, seg_series_description="my seg")
    seg = build_segmentation(volume, labels, spec, identity, settings)
    sr = build_report(volume, labels, seg, spec, identity, settings)
    folder = tmp_path_factory.mktemp("results")
    save_atomic(seg, folder / "seg.dcm")
    save_atomic(sr, folder / "sr.dcm")
    return spec, volume, labels, identity, folder


def test_seg_reads_back_onto_the_source_slices(built, small_series: PhantomSeries) -> None:  # type: ignore[no-untyped-def]
    spec, volume, labels, identity, folder = built
    seg = hd.seg.segread(folder / "seg.dcm")
    assert seg.SegmentationType == "BINARY"
    assert (seg.StudyInstanceUID, seg.SeriesNumber, seg.SeriesDescription) == (
        small_series.identity.study_instance_uid, 77, "my seg")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == small_series.identity.series_instance_uid
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    for description in seg.SegmentSequence:
        value = {"Lung": 1, "Lesion": 2}[description.SegmentLabel]
        assert description.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == spec.name
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[int(description.SegmentNumber)],
                                                 assert_missing_frames_are_empty=True)[..., 0]
        np.testing.assert_array_equal(mask > 0, labels == value)


def test_both_objects_name_the_processing_equipment_and_its_model(built) -> None:  # type: ignore[no-untyped-def]
    spec, volume, labels, identity, folder = built
    for name in ("seg.dcm", "sr.dcm"):
        ds = hd.seg.segread(folder / name) if name == "seg.dcm" else hd.sr.srread(folder / name)
        ours = [e for e in ds.ContributingEquipmentSequence if e.get("ManufacturerModelName") == spec.name
                and e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"]
        equipment = ours[0]
        found = [(e.Manufacturer, e.get("ManufacturerModelName")) for e in ds.ContributingEquipmentSequence]
        assert len(ours) == 1, found
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert equipment.ManufacturerModelName == spec.name
        assert equipment.DeviceSerialNumber == identity.device_uid
        assert ds.StudyInstanceUID == volume.datasets[0].StudyInstanceUID


def test_sr_has_one_volumetric_group_per_segment_with_its_volume(built) -> None:  # type: ignore[no-untyped-def]
    spec, volume, labels, identity, folder = built
    sr = hd.sr.srread(folder / "sr.dcm")
    assert sr.SOPInstanceUID == identity.sr_sop_instance_uid
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    seg = hd.seg.segread(folder / "seg.dcm")
    numbers = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
    for group in groups:
        assert group.reference_type == codes.DCM.ReferencedSegment
        name = str(group.tracking_identifier).split()[0]
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [numbers[name]]
        assert (segment.source_series_for_segmentation.value
                == volume.datasets[0].SeriesInstanceUID)
        volume_ml = group.get_measurements(name=codes.SCT.Volume)[0].value
        value = {"Lung": 1, "Lesion": 2}[name]
        assert float(volume_ml) == pytest.approx((labels == value).sum() * volume.voxel_ml, rel=1e-3)


def test_result_uids_are_stable_for_the_same_input_and_model(built) -> None:  # type: ignore[no-untyped-def]
    spec, volume, labels, identity, folder = built
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    assert result_identity(spec, "digest", list(reversed(uids))) == identity
    assert result_identity(spec, "other weights", uids).seg_sop_instance_uid != identity.seg_sop_instance_uid
    assert result_identity(spec, "digest", uids[:-1]).seg_sop_instance_uid != identity.seg_sop_instance_uid


def test_a_seg_on_a_multi_frame_source_references_its_frames(tmp_path: Path) -> None:
    """A Legacy Converted Enhanced CT (frames stored head to foot): the SEG's frames follow the source."""
    from pydicom import dcmread

    from conftest import phantom_series
    from worker.results.identity import stable_uid

    series = phantom_series(tmp_path / "src", seed=41, matrix=64, slice_thickness=5.0, orientation="FFS")
    legacy = [dcmread(p) for p in reversed(series.paths)]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, stable_uid("lce series"), 5, stable_uid("lce"), 1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    spec = two_label_spec(tmp_path)
    volume = assemble([tmp_path / "enhanced.dcm"], spec.min_slices)
    assert volume.multiframe and [f.number for f in volume.frames][:2] != [1, 2]
    labels = series.case.labels
    identity = result_identity(spec, "digest", [enhanced.SOPInstanceUID])
    seg = build_segmentation(volume, labels, spec, identity, OutputSettings())
    save_atomic(seg, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    numbers = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
    frames = list(range(1, len(volume.frames) + 1))
    mask = seg.get_pixels_by_source_frame(enhanced.SOPInstanceUID, frames, segment_numbers=[numbers["Lung"]],
                                          assert_missing_frames_are_empty=True)[..., 0]
    np.testing.assert_array_equal(mask > 0, (labels == 1)[::-1])



def test_ct_seg_and_sr_pass_the_dicom3tools_validator(built) -> None:  # type: ignore[no-untyped-def]
    from conftest import dciodvfy

    folder = built[4]
    for name in ("seg.dcm", "sr.dcm"):
        errors, warnings = dciodvfy(folder / name)
        print(name, warnings)
        assert errors == [], errors
        assert warnings == [], warnings


def test_mr_seg_and_sr_pass_the_dicom3tools_validator(tmp_path: Path) -> None:
    """A real oblique MR series (dcmqi's ADC example, 20 slices) with a cylinder drawn on it."""
    from conftest import SHARED_DATA, dciodvfy

    folder = SHARED_DATA / "dcmqi" / "data" / "paramaps" / "pm-example-dcm" / "701-ADCb500"
    volume = assemble(sorted(folder.iterdir()))
    assert volume.modality == "MR"
    spec = two_label_spec(tmp_path)
    slices = volume.image.GetSize()[2]
    _, y, x = np.ogrid[:slices, :256, :256]
    labels = np.broadcast_to((((y - 128) ** 2 + (x - 120) ** 2) < 30**2).astype(np.uint8), (slices, 256, 256)).copy()
    labels[slices // 2, 100:110, 100:110] = 2
    identity = result_identity(spec, "digest", [str(ds.SOPInstanceUID) for ds in volume.datasets])
    seg = build_segmentation(volume, labels, spec, identity, OutputSettings())
    sr = build_report(volume, labels, seg, spec, identity, OutputSettings())
    for name, dataset in (("seg.dcm", seg), ("sr.dcm", sr)):
        save_atomic(dataset, tmp_path / name)
        errors, warnings = dciodvfy(tmp_path / name)
        print(name, warnings)
        assert errors == [], errors
        # Both warnings come from the source study and are copied on purpose (the results belong to it):
        # its Study ID is empty, and its procedure codes use GE's private coding scheme "GEIIS".
        assert all("Study ID" in w or "<GEIIS>" in w for w in warnings), warnings


def test_dcmqi_reads_the_seg_back_to_the_same_mask_on_the_source_grid(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dcmqi's segimage2itkimage (the reference converter) against the labels the SEG was built from."""
    import json
    import shutil
    import subprocess
    import sys

    import SimpleITK as sitk

    spec, volume, labels, identity, folder = built
    tool = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    result = subprocess.run([tool, "--inputDICOM", str(folder / "seg.dcm"), "--outputDirectory", str(tmp_path),
                             "--outputType", "nifti"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    names = [group[0]["SegmentLabel"] for group in meta["segmentAttributes"]]
    assert names == ["Lung", "Lesion"]
    for n, name in enumerate(names, start=1):
        converted = sitk.ReadImage(str(tmp_path / f"{n}.nii.gz"))
        np.testing.assert_allclose(converted.GetSpacing(), volume.image.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(converted.GetDirection(), volume.image.GetDirection(), atol=1e-5)
        index = volume.image.TransformPhysicalPointToContinuousIndex(converted.GetOrigin())
        np.testing.assert_allclose(index, np.round(index), atol=1e-3)  # it starts on a source voxel
        on_source = sitk.Resample(converted, volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  sitk.sitkUInt8)
        value = {"Lung": 1, "Lesion": 2}[name]
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_source) > 0, labels == value)


def test_highdicom_reads_both_objects_back_without_warnings(built) -> None:  # type: ignore[no-untyped-def]
    import warnings

    folder = built[4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = hd.seg.segread(folder / "seg.dcm")
        seg.get_volume()
        sr = hd.sr.srread(folder / "sr.dcm")
        sr.content.get_volumetric_roi_measurement_groups()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("kept, name", [(2, "Lesion"), (1, "Lung")])
def test_segments_are_numbered_from_one_and_undescribed_values_left_out(small_series: PhantomSeries, kept: int,
                                                                        name: str, tmp_path: Path) -> None:
    """One label found (the lesion, value 2, or the lung, value 1) beside a value no label describes:
    one segment, number 1, holding exactly that label's voxels."""
    spec = two_label_spec(tmp_path)
    volume = assemble(small_series.paths, spec.min_slices)
    truth = with_lesion(small_series.case.labels)
    labels = np.where(truth == kept, kept, np.where(truth > 0, 9, 0)).astype(np.uint8)
    identity = result_identity(spec, "digest", [str(ds.SOPInstanceUID) for ds in volume.datasets])
    seg = build_segmentation(volume, labels, spec, identity, OutputSettings())
    assert [(int(d.SegmentNumber), str(d.SegmentLabel)) for d in seg.SegmentSequence] == [(1, name)]
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(mask[..., 0] > 0, truth == kept)


def test_encoding_leaves_the_source_headers_unchanged(tmp_path: Path) -> None:
    """Merged frames of reference and a shared orientation are written on copies: the volume's own
    headers (read again by later stages and by the rejection note) keep what the files say."""
    import pydicom

    from conftest import phantom_series

    series = phantom_series(tmp_path / "src", seed=42, matrix=64, slice_thickness=5.0)
    for k, path in enumerate(series.paths):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = f"{ds.FrameOfReferenceUID}.{k % 2}"
        if k % 2:
            ds.ImageOrientationPatient = [f"{v + 1e-6:.7f}" for v in ds.ImageOrientationPatient]
        ds.save_as(path)
    spec = two_label_spec(tmp_path)
    volume = assemble(series.paths, spec.min_slices)
    before = [{e.tag: (e.VR, e.value) for e in ds} for ds in volume.datasets]
    chosen = f"{series.identity.frame_of_reference_uid}.0"
    sources = source_headers(volume, chosen)
    identity = result_identity(spec, "digest", volume.sop_instance_uids)
    findings = find(volume, with_lesion(series.case.labels), spec)
    seg = build_seg(volume, sources, findings, spec, identity, OutputSettings())
    build_sr(sources, findings, seg, spec, identity, OutputSettings())
    assert {s.FrameOfReferenceUID for s in sources} == {chosen}
    assert len({tuple(s.ImageOrientationPatient) for s in sources}) == 1
    after = [{e.tag: (e.VR, e.value) for e in ds} for ds in volume.datasets]
    changed = [(k, tag) for k, (b, a) in enumerate(zip(before, after)) for tag in b.keys() | a.keys()
               if b.get(tag) != a.get(tag)]
    assert changed == [], "the source headers were changed by encoding"
    assert len({str(ds.FrameOfReferenceUID) for ds in volume.datasets}) == 2
