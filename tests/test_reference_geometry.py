"""Real scanner series against the reference conversions beside them in ../shared/data.

Each reference NIfTI is read by SimpleITK, which turns it into LPS like ours; a reference that stacks
its slices the other way is the same grid walked backwards, so it is compared after reversing it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread

from conftest import SHARED_DATA
from db.errors import RejectedInput
from worker.assembly.geometry import frames_of
from worker.assembly.pixels import read_pixels
from worker.assembly.series import assemble

D2N = SHARED_DATA / "dicom2nifti" / "tests" / "data"

SINGLE_FRAME = [
    "anatomical/001", "anatomical/001_implicit", "ge/anatomical/001", "ge/anatomical/001_implicit",
    "ge/anatomical/001_single_slice", "hitachi/anatomical/001", "hitachi/anatomical/001_implicit",
    "generic/anatomical/001", "generic/anatomical/001_implicit", "generic/anatomical/002_non_isotropic",
    "generic/compressed/001", "generic/compressed_rle/001", "generic/compressed_jpegls/001",
    "generic/compressed_j2k/001", "generic/compressed_jpeg/001", "failing/slicecount/001",
]
MULTI_FRAME = [
    "philips_enhanced/anatomical/001", "philips_enhanced/anatomical/001_implicit",
    "siemens_multiframe/anatomical/001", "hyperfine/anatomical/001",
]


def files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        pytest.fail(f"{folder} is missing: ../shared/data must sit beside the clone")
    return [p for p in sorted(folder.rglob("*")) if p.is_file()]


def same_walk(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` reversed along k when the reference stacks its slices the other way."""
    ours = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    theirs = np.reshape(reference.GetDirection(), (3, 3))[:, 2]
    if float(ours @ theirs) >= 0:
        return image
    return sitk.Flip(image, [False, False, True], flipAboutOrigin=False)


def assert_same(image: sitk.Image, reference: sitk.Image) -> None:
    image = same_walk(image, reference)
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=0.01)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=0.01)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)
    ours, theirs = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference).astype(np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case", SINGLE_FRAME)
def test_single_frame_series_equal_their_reference(case: str) -> None:
    folder = D2N / case
    reference = sitk.ReadImage(str(folder) + "_ground_truth.nii.gz")
    assert_same(assemble(files(folder)).image, reference)


@pytest.mark.parametrize("case", MULTI_FRAME)
def test_multi_frame_objects_equal_their_reference(case: str) -> None:
    """Enhanced MR objects assembled from their per-frame functional groups (position, rescale)."""
    folder = D2N / case
    reference = sitk.ReadImage(str(folder) + "_ground_truth.nii.gz")
    volume = assemble(files(folder))
    assert volume.multiframe
    assert_same(volume.image, reference)


@pytest.mark.parametrize("case", ["23x38x3", "24x38x3"])
def test_legacy_converted_enhanced_ct_equals_its_single_frame_source(case: str) -> None:
    folder = SHARED_DATA / "dcmqi" / "data" / "segmentations" / case
    single = assemble(files(folder / "image")).image
    multi = assemble(files(folder / "multiframe")).image
    for ours, theirs in ((multi.GetSpacing(), single.GetSpacing()), (multi.GetOrigin(), single.GetOrigin()),
                         (multi.GetDirection(), single.GetDirection())):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(multi), sitk.GetArrayFromImage(single))


def decoded(path: Path) -> np.ndarray:
    """The stored image of one instance through ainode's pixel path (headers, codecs, rescale)."""
    frames = frames_of(dcmread(path, defer_size=4096), path)
    return sitk.GetArrayFromImage(read_pixels(frames, list(range(len(frames)))))


@pytest.mark.parametrize("number", range(2, 10))
def test_every_transfer_syntax_decodes_to_the_uncompressed_pixels(number: int) -> None:
    """dcm_qa_ts: one Siemens MR image in implicit and big endian, RLE, JPEG lossless (×2), JPEG-LS (×2)
    and JPEG 2000, each against the explicit little endian original (1.dcm). The image is a mosaic, which
    assembly refuses (next test), so its pixels are read through the pixel path alone."""
    folder = SHARED_DATA / "dcm_qa_ts" / "In"
    original = decoded(folder / "1.dcm")
    assert original.shape == (1, 384, 384) and original.any()
    np.testing.assert_array_equal(decoded(folder / f"{number}.dcm"), original)


def test_a_siemens_mosaic_is_refused_not_taken_for_one_slice() -> None:
    """35 slices tiled in one 384x384 image: as one slice its geometry would be wrong, so it is refused."""
    with pytest.raises(RejectedInput, match=r"no image volume in the series: .*a Siemens mosaic"):
        assemble([SHARED_DATA / "dcm_qa_ts" / "In" / "1.dcm"])


@pytest.mark.parametrize("codec", ["compressed_rle", "compressed_jpegls", "compressed_j2k", "compressed_jpeg"])
def test_every_codec_of_one_series_decodes_to_the_same_pixels(codec: str) -> None:
    """The same MR series stored in JPEG 2000, RLE, JPEG-LS and JPEG lossless."""
    j2k = sitk.GetArrayFromImage(assemble(files(D2N / "generic" / "compressed" / "001")).image)
    other = sitk.GetArrayFromImage(assemble(files(D2N / "generic" / codec / "001")).image)
    assert j2k.any()
    np.testing.assert_array_equal(other, j2k)


def test_a_multi_frame_object_holding_several_volumes_is_refused(tmp_path: Path) -> None:
    """Frames 5-8 of the Philips object moved onto the positions of frames 1-4: two volumes, not one."""
    (source,) = files(D2N / "philips_enhanced" / "anatomical" / "001")
    ds = dcmread(source)
    frames = ds.PerFrameFunctionalGroupsSequence
    for n in range(4):
        frames[n + 4].PlanePositionSequence[0].ImagePositionPatient = list(
            frames[n].PlanePositionSequence[0].ImagePositionPatient)
    ds.save_as(tmp_path / "two-volumes.dcm")
    with pytest.raises(RejectedInput, match=r"8 frames at 4 positions \(2 at each\) .* several volumes in one series"):
        assemble([tmp_path / "two-volumes.dcm"])
