"""Assembling phantom series: geometry equals the phantom's grid; what is not one volume is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.fileset import FileSet

from conftest import PhantomSeries, phantom_series
from db.errors import RejectedInput
from worker.assembly.geometry import tilt_degrees
from worker.assembly.series import assemble


def check_geometry(series: PhantomSeries, paths: list[Path]) -> None:
    volume = assemble(paths, min_slices=16)
    grid = series.case.grid
    assert volume.image.GetSize() == grid.size
    np.testing.assert_allclose(volume.image.GetSpacing(), grid.spacing, atol=1e-3)
    np.testing.assert_allclose(volume.image.GetOrigin(), grid.origin, atol=1e-3)
    np.testing.assert_allclose(np.reshape(volume.image.GetDirection(), (3, 3)), grid.direction, atol=1e-5)
    expected = np.clip(np.rint(series.case.hu + 1024), 0, 4095) - 1024
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), expected)
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == list(range(1, grid.size[2] + 1))


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "oblique"])
def test_geometry_matches_the_phantom_whatever_the_file_order(tmp_path: Path, orientation: str) -> None:
    series = phantom_series(tmp_path, seed=3, matrix=64, slice_thickness=5.0, orientation=orientation)
    shuffled = list(series.paths)
    np.random.default_rng(0).shuffle(shuffled)
    check_geometry(series, shuffled)


def test_per_slice_rescale_is_applied_to_each_slice(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=4, matrix=64, slice_thickness=5.0)
    reference = sitk.GetArrayFromImage(assemble(series.paths).image)
    for path in series.paths[::2]:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) - 1024
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"  # same HU, different stored values
        ds.PixelData = np.clip((stored + 2048) // 2, 0, 65535).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 16, 15
        ds.save_as(path)
    rescaled = sitk.GetArrayFromImage(assemble(series.paths).image)
    assert np.abs(rescaled - reference).max() <= 1.0  # HU halved in precision, not shifted


def test_a_missing_slice_is_refused_with_its_position(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=5, matrix=48, slice_thickness=5.0)
    missing = series.paths.pop(20)
    z = float(pydicom.dcmread(missing).ImagePositionPatient[2])
    with pytest.raises(RejectedInput, match=r"uneven slice spacing: 10\.00 mm between") as caught:
        assemble(series.paths)
    assert f"{z - 5:.2f}" in str(caught.value) or f"{z + 5:.2f}" in str(caught.value)


def test_two_instances_at_one_position_are_refused(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=5, matrix=48, slice_thickness=5.0)
    copy = tmp_path / "copy.dcm"
    ds = pydicom.dcmread(series.paths[3])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    ds.save_as(copy)
    with pytest.raises(RejectedInput, match="are at the same position"):
        assemble(series.paths + [copy])


def test_too_few_slices_are_refused(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    with pytest.raises(RejectedInput, match="the model needs at least 500"):
        assemble(series.paths, min_slices=500)


def test_a_slice_in_another_orientation_is_ignored_with_its_reason(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    ds = pydicom.dcmread(series.paths[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(series.paths[0])
    volume = assemble(series.paths)
    assert volume.image.GetSize()[2] == len(series.paths) - 1
    assert volume.ignored == (f"{ds.SOPInstanceUID}: orientation [1.0, 0.0, 0.0, 0.0, 0.0, -1.0] differs from "
                              "the main stack's",)


def test_localizers_non_image_objects_and_dicomdir_files_are_ignored(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=7, matrix=48, slice_thickness=5.0)
    scout = pydicom.dcmread(series.paths[5])
    scout.SOPInstanceUID += ".9"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(tmp_path / "scout.dcm")
    report = pydicom.dcmread(series.paths[6], stop_before_pixels=True)
    report.SOPInstanceUID += ".8"
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    report.save_as(tmp_path / "report.dcm")
    directory = FileSet()
    directory.add(series.paths[0])
    directory.write(tmp_path / "media")  # a DICOMDIR: no SOP Class UID of its own, only in its file meta
    volume = assemble(series.paths + [tmp_path / "scout.dcm", tmp_path / "report.dcm", tmp_path / "media" / "DICOMDIR"])
    assert volume.image.GetSize()[2] == len(series.paths)
    assert sorted(volume.ignored) == sorted([
        f"{scout.SOPInstanceUID}: a localizer (ImageType LOCALIZER)",
        f"{report.SOPInstanceUID}: a Comprehensive 3D SR Storage object, not a CT, MR or PET image",
        "DICOMDIR: a Media Storage Directory Storage object, not a CT, MR or PET image",
    ])


def test_a_tilted_stack_is_assembled_on_its_acquired_sheared_grid(tmp_path: Path) -> None:
    """Gantry tilt: slice k of the volume sits exactly where instance k was acquired."""
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    shift = 5.0 * np.tan(np.deg2rad(15))
    for k, path in enumerate(series.paths):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * shift, z]
        ds.save_as(path)
    volume = assemble(series.paths)
    assert tilt_degrees(volume.image) == pytest.approx(15.0, abs=0.01)
    for k, frame in enumerate(volume.frames):
        np.testing.assert_allclose(volume.image.TransformIndexToPhysicalPoint((0, 0, k)), frame.position, atol=1e-3)
        row, col = frame.orientation[:3], frame.orientation[3:]
        pixel = series.case.grid.spacing[0]
        np.testing.assert_allclose(volume.image.TransformIndexToPhysicalPoint((7, 11, k)),
                                   frame.position + 7 * pixel * row + 11 * pixel * col, atol=1e-3)


def test_slices_shifted_unevenly_are_refused(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    ds = pydicom.dcmread(series.paths[10])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x + 3.0, y, z]
    ds.save_as(series.paths[10])
    with pytest.raises(RejectedInput, match="3.00 mm off the line through the other slice positions"):
        assemble(series.paths)


def test_real_gantry_tilt_series_keeps_every_slice_where_it_was_acquired() -> None:
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "dicom2nifti" / "tests" / "data" / "failing" / "gantrytilting" / "001"
    volume = assemble(sorted(folder.iterdir()))
    assert tilt_degrees(volume.image) > 10
    for k, frame in enumerate(volume.frames):
        np.testing.assert_allclose(volume.image.TransformIndexToPhysicalPoint((0, 0, k)), frame.position, atol=1e-3)


def test_an_unreadable_file_is_named(tmp_path: Path, small_series: PhantomSeries) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(RejectedInput, match="bad.dcm cannot be read"):
        assemble([*small_series.paths[:3], bad])
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_pixel_data_shorter_than_its_matrix_is_refused_not_read_past(tmp_path: Path) -> None:
    """A slice whose Pixel Data holds half its rows, with another element after it: the reader must not
    take the following bytes for pixels."""
    series = phantom_series(tmp_path / "series", seed=9, matrix=96, slice_thickness=5.0)
    short = pydicom.dcmread(series.paths[4])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    short.add_new(0x7FE10010, "OB", b"\x00" * 10_000)  # a private element after Pixel Data
    short.save_as(series.paths[4])
    with pytest.raises(RejectedInput, match=rf"{short.SOPInstanceUID} cannot be decoded: PixelData is 9216 bytes"):
        assemble(series.paths)


@pytest.mark.parametrize(
    ("case", "min_slices", "expected"),
    [
        ("failing/sliceorientation/001", 1, "more than one orientation in one series and no clear main stack"),
        ("failing/notavolume/001", 1, "all 4 images are at one position (61.50 mm along the normal): not a volume"),
        ("failing/slicecount/001", 16, "the series has 2 slices; the model needs at least 16"),
        ("generic/rgb/001", 1, "no image volume in the series: "),
        ("failing/sliceincrement/001", 1, "uneven slice spacing: "),
    ],
)
def test_real_series_that_are_not_one_volume_are_refused_with_a_reason(case: str, min_slices: int,
                                                                      expected: str) -> None:
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "dicom2nifti" / "tests" / "data" / case
    if not folder.is_dir():
        pytest.fail(f"{folder} is missing: ../shared/data must sit beside the clone")
    with pytest.raises(RejectedInput) as caught:
        assemble(sorted(p for p in folder.iterdir() if p.is_file()), min_slices)
    assert expected in str(caught.value)
    if case == "generic/rgb/001":
        assert "a Secondary Capture Image Storage object, not a CT, MR or PET image" in str(caught.value)


def test_a_missing_slice_can_be_interpolated_when_configured(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=5, matrix=48, slice_thickness=5.0)
    series.paths.pop(20)
    volume = assemble(series.paths, max_missing=1)
    assert volume.image.GetSize()[2] == len(series.paths) + 1 and volume.interpolated == 1
    assert 20 not in volume.slots and len(volume.frames) == len(series.paths)
    values = sitk.GetArrayFromImage(volume.image).astype(np.float32)
    np.testing.assert_array_equal(values[20], np.rint((values[19] + values[21]) / 2), "the mean of its neighbours")
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=np.uint8)
    labels[20] = 1
    assert volume.in_source_order(labels).sum() == 0, "the SEG covers acquired slices only"
    with pytest.raises(RejectedInput, match="uneven slice spacing"):
        assemble(series.paths, max_missing=0)


def test_tilt_and_missing_slice_match_the_reference_when_interpolation_is_allowed() -> None:
    """sliceincrement/002: 15.5 degree tilt and one missing slice; dicom2nifti's de-tilted conversion."""
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "dicom2nifti" / "tests" / "data" / "failing" / "sliceincrement"
    paths = sorted((folder / "002").iterdir())
    with pytest.raises(RejectedInput, match="uneven slice spacing"):
        assemble(paths)
    volume = assemble(paths, max_missing=1)
    assert volume.interpolated == 1 and tilt_degrees(volume.image) == pytest.approx(15.5, abs=0.1)
    reference = sitk.ReadImage(str(folder / "002_ground_truth.nii.gz"))
    ours = sitk.GetArrayFromImage(sitk.Resample(volume.image, reference, sitk.Transform(), sitk.sitkLinear,
                                                -5000, sitk.sitkFloat32))
    theirs = sitk.GetArrayFromImage(reference).astype(np.float32)
    inner = slice(1, 4)  # the reference stretches the stack by 3.7 %, so its end slices leave our volume
    inside = ours[inner] > -5000
    assert inside.mean() > 0.9
    assert np.abs(ours[inner][inside] - theirs[inner][inside]).mean() < 5.0
