"""Overlapping segments (BraTS's nested regions) and results that reference several input series.

The labels are brats_mri_segmentation's own (its shipped labels.toml): a label map of 1, 2 and 4, as the
bundle's postprocessing writes it, becomes three binary segments, tumour core {1, 4}, whole tumour
{1, 2, 4} and enhancing tumour {4}; the SEG and SR of a four-series input reference all four."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from conftest import dciodvfy
from db.errors import ConfigurationError
from db.storage import write_atomic
from training.dicom import StudyIdentity, write_series
from training.phantom import make_case
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.bundle_spec import BundleSpec, describe_bundle
from worker.models.postprocess import clean
from worker.models.runtime import ModelFailure, ModelOutput, check
from worker.models.spec import ModelSpec
from worker.results.content import source_headers
from worker.results.findings import find
from worker.results.identity import OutputSettings, result_identity
from worker.results.seg import build_segmentation
from worker.results.sr import build_nothing_found_report, build_report
from zoo import copy_bundle

REGIONS = {"Tumor core": (1, 4), "Whole tumor": (1, 2, 4), "Enhancing tumor": (4,)}


def save(dataset: hd.SOPClass, path: Path) -> Path:
    write_atomic(path, lambda fh: dataset.save_as(fh, enforce_file_format=True))
    return path


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> BundleSpec:
    return describe_bundle(copy_bundle("brats_mri_segmentation", tmp_path_factory.mktemp("brats")), {})


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Four series of one study and frame of reference, on two different grids."""
    folder = tmp_path_factory.mktemp("study")
    identity = StudyIdentity.from_seed(41)
    out = []
    for number, (seed, matrix) in enumerate([(41, 64), (42, 48), (43, 56), (44, 48)], start=1):
        case = make_case(seed, matrix=matrix, slice_thickness=5.0, orientation="HFS")
        series = dataclasses.replace(identity, series_instance_uid=f"{identity.series_instance_uid}.{number}",
                                     series_number=number)
        out.append(write_series(case.hu, case.grid, series, folder / str(number)))
    return out


def brats_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Nested balls as the bundle writes them: oedema 2 around a core 1 around an enhancing 4."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n // 2 for n in shape]
    r2 = sum(((g - c) / max(1, n / 4)) ** 2 for g, c, n in zip(grid, centre, shape))
    return np.select([r2 <= 0.15, r2 <= 0.4, r2 <= 1.0], [4, 1, 2], 0).astype(np.uint8)


def results(volume: Volume, labels: np.ndarray, spec: ModelSpec, others: list[Volume],
            folder: Path) -> tuple[Path, Path]:
    identity = result_identity(spec, "digest", [str(ds.SOPInstanceUID) for ds in volume.datasets])
    settings = OutputSettings()
    findings = find(volume, clean(labels, spec.labels, volume.voxel_ml), spec)
    other_sources = [ds for other in others for ds in source_headers(other)]
    seg = build_segmentation(volume, source_headers(volume), findings, spec, identity, settings,
                             other_sources=other_sources)
    sr = build_report(source_headers(volume), findings, seg, spec, identity, settings, other_sources=other_sources)
    return save(seg, folder / "seg.dcm"), save(sr, folder / "sr.dcm")


def test_the_brats_bundle_describes_with_its_four_channels_and_three_regions(brats: BundleSpec) -> None:
    assert brats.channels == ("T1c", "T1", "T2", "FLAIR") and brats.modality == "MR"
    assert [(label.value, label.name, label.mask_values) for label in brats.labels] == [
        (1, "Tumor core", (1, 4)), (2, "Whole tumor", (1, 2, 4)), (3, "Enhancing tumor", (4,))]
    assert {label.category.value for label in brats.labels} == {"49755003"}


def test_a_sigmoid_bundle_without_values_is_refused_naming_the_labels(tmp_path: Path) -> None:
    bundle = copy_bundle("brats_mri_segmentation", tmp_path / "brats")
    text = (bundle / "labels.toml").read_text()
    (bundle / "labels.toml").write_text(text.replace("values = [1, 2, 4]\n", "").replace("values = [4]\n", ""))
    with pytest.raises(ConfigurationError, match=r"not background.*missing for: Whole tumor, Enhancing tumor$"):
        describe_bundle(bundle, {})
    (bundle / "labels.toml").unlink()
    with pytest.raises(ConfigurationError, match="missing for: Tumor core, Whole tumor, Enhancing tumor"):
        describe_bundle(bundle, {})


def test_clean_up_on_a_label_of_several_values_is_refused_naming_it(tmp_path: Path) -> None:
    bundle = copy_bundle("brats_mri_segmentation", tmp_path / "brats")
    text = (bundle / "labels.toml").read_text()
    (bundle / "labels.toml").write_text(text.replace("values = [1, 4]\n", "values = [1, 4]\nfill_holes = true\n"))
    with pytest.raises(ConfigurationError, match=r"labels.Tumor core: .*'Tumor core' is made of values \[1, 4\]"):
        describe_bundle(bundle, {})
    (bundle / "labels.toml").write_text(text.replace("values = [4]\n", "values = [4]\nkeep_largest = 1\n"))
    with pytest.raises(ConfigurationError, match=r"labels.Enhancing tumor: .*\(Tumor core, Whole tumor share"):
        describe_bundle(bundle, {})


def test_check_accepts_the_union_of_the_values_and_names_others(brats: BundleSpec, study: list[list[Path]]) -> None:
    import SimpleITK as sitk

    labels = np.array([[[0, 1, 2, 4]]], np.uint8)
    grid = sitk.GetImageFromArray(labels)
    check(ModelOutput(grid=grid, labels=labels), brats)
    with pytest.raises(ModelFailure, match=r"returned label values 3; its labels are made of 0, 1, 2, 4"):
        check(ModelOutput(grid=grid, labels=np.array([[[0, 1, 3, 4]]], np.uint8)), brats)


def test_overlapping_regions_give_a_seg_of_three_exact_masks_that_dciodvfy_accepts(
        brats: BundleSpec, study: list[list[Path]], tmp_path: Path) -> None:
    volume = assemble(study[0], 1)
    labels = brats_labels(volume.values.shape)
    seg_path, sr_path = results(volume, labels, brats, [], tmp_path)
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 3
    assert seg.NumberOfFrames < 3 * len(volume.datasets)  # only the frames where a region is
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    for description in seg.SegmentSequence:
        expected = volume.in_source_order(np.isin(labels, REGIONS[description.SegmentLabel]))
        mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[int(description.SegmentNumber)],
                                                 assert_missing_frames_are_empty=True)[..., 0]
        assert np.array_equal(mask.astype(bool), expected), description.SegmentLabel
    for path in (seg_path, sr_path):
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def test_seg_and_sr_of_four_series_reference_all_four_and_dciodvfy_accepts_them(
        brats: BundleSpec, study: list[list[Path]], tmp_path: Path) -> None:
    volumes = [assemble(paths, 1) for paths in study]
    seg_path, sr_path = results(volumes[0], brats_labels(volumes[0].values.shape), brats, volumes[1:], tmp_path)
    expected = {str(v.datasets[0].SeriesInstanceUID): {str(ds.SOPInstanceUID) for ds in v.datasets}
                for v in volumes}
    assert len(expected) == 4
    seg = hd.seg.segread(seg_path)
    assert {str(item.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in item.ReferencedInstanceSequence}
            for item in seg.ReferencedSeriesSequence} == expected
    sr = hd.sr.srread(sr_path)
    evidence = {str(series.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence}
                for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence}
    assert {uid: evidence[uid] for uid in expected} == expected and seg.SeriesInstanceUID in evidence
    text = str(sr)
    assert "Image Library" in text and all(uid in text for uids in expected.values() for uid in uids)
    for path in (seg_path, sr_path):
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def test_a_report_of_nothing_found_references_every_series(brats: BundleSpec, study: list[list[Path]],
                                                           tmp_path: Path) -> None:
    volumes = [assemble(paths, 1) for paths in study]
    identity = result_identity(brats, "digest", [str(ds.SOPInstanceUID) for ds in volumes[0].datasets])
    sr = build_nothing_found_report(source_headers(volumes[0]), brats, identity, OutputSettings(),
                                    other_sources=[ds for v in volumes[1:] for ds in source_headers(v)])
    path = save(sr, tmp_path / "sr.dcm")
    series = {str(s.SeriesInstanceUID) for item in sr.CurrentRequestedProcedureEvidenceSequence
              for s in item.ReferencedSeriesSequence}
    assert series == {str(v.datasets[0].SeriesInstanceUID) for v in volumes}
    errors, _ = dciodvfy(path)
    assert not errors, errors
