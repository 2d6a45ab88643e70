"""Assembling phantom series: geometry equals the phantom's grid; what is not one volume is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import PhantomSeries, phantom_series
from db.errors import RejectedInput
from worker.geometry import assemble


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
    for k, path in enumerate(series.paths[::2]):
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


def test_too_few_slices_and_mixed_orientations_are_refused(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    with pytest.raises(RejectedInput, match="the model needs at least 500"):
        assemble(series.paths, min_slices=500)
    ds = pydicom.dcmread(series.paths[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(series.paths[0])
    with pytest.raises(RejectedInput, match="more than one orientation"):
        assemble(series.paths)


def test_a_sheared_stack_is_refused_not_assembled_wrongly(tmp_path: Path) -> None:
    series = phantom_series(tmp_path, seed=6, matrix=48, slice_thickness=5.0)
    for k, path in enumerate(series.paths):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 5.0 * np.tan(np.deg2rad(15)), z]
        ds.save_as(path)
    with pytest.raises(RejectedInput, match="gantry tilt"):
        assemble(series.paths)


def test_real_scanner_data_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "dicom2nifti" / "tests" / "data" / "failing" / "sliceincrement" / "001"
    if not folder.is_dir():
        pytest.fail(f"{folder} is missing: ../shared/data must sit beside the clone")
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    with pytest.raises(RejectedInput, match="uneven slice spacing"):
        assemble(paths)


def test_an_unreadable_file_is_named(tmp_path: Path, small_series: PhantomSeries) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(RejectedInput, match="bad.dcm cannot be read"):
        assemble([*small_series.paths[:3], bad])
    shutil.rmtree(tmp_path, ignore_errors=True)
