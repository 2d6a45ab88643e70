"""Models of several input channels: MR phantoms, per-channel preprocessing, training a T1 + T2 model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom import dcmread
from typer.testing import CliRunner

from ainode.cli import app
from ainode.kit import wait_for
from conftest import NodeProcess, StoreSCP, storescu
from db.errors import RejectedInput
from training.metrics import dice
from training.mr import make_mr_case, mr_images, write_mr_cases, write_mr_study
from training.nifti import DatasetError, check_cases
from worker.models import registry
from worker.models.grid import to_model_space
from worker.models.runtime import segment
from worker.models.spec import DEMO_MODEL, PreprocessSpec, load_spec
from worker.models.unet import UNetRuntime, build_network

runner = CliRunner()


def mr_model(folder: Path, channels: str = '["T1", "T2"]') -> Path:
    """The demo model's labels on a small three-level network at 6 mm, taking T1 and T2 z-scored."""
    text = DEMO_MODEL.read_text()
    for old, new in (('modality = "CT"', f'modality = "MR"\nchannels = {channels}'),
                     ("channels = [16, 32, 64, 128, 256]", "channels = [8, 16, 32]"),
                     ("strides = [2, 2, 2, 2]", "strides = [2, 2]"),
                     ("spacing = [3.0, 3.0, 3.0]", 'spacing = [6.0, 6.0, 6.0]\nnormalize = "zscore"'),
                     ("roi_size = [96, 96, 96]", "roi_size = [32, 32, 32]")):
        assert old in text
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(text)
    return folder / "model.toml"


def test_each_channel_is_normalised_on_its_own_onto_the_model_grid() -> None:
    channels, _ = mr_images(make_mr_case(3, matrix=48, slice_thickness=8.0))
    spec = PreprocessSpec(spacing=(8.0, 8.0, 8.0), normalize="zscore")
    stacked, grid = to_model_space(sitk.Compose(*channels), spec)
    single, same = to_model_space(channels[1], spec)
    assert stacked.shape == (2, *reversed(grid.GetSize())) and single.shape == stacked.shape[1:]
    assert np.array_equal(stacked[1], single) and same.GetSize() == grid.GetSize()
    for channel in stacked:
        inside = channel[channel != 0]
        assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1) < 1e-3
    assert not np.allclose(stacked[0], stacked[1], atol=0.5)  # T1 and T2 tell different things


def test_an_mr_study_has_one_frame_of_reference_and_a_grid_per_series(tmp_path: Path) -> None:
    import pydicom

    study = write_mr_study(tmp_path, 4, contrasts=("T1", "T2", "FLAIR", "T1 POST GD"), matrix=48,
                           slice_thickness=8.0)
    first = {c: pydicom.dcmread(paths[0]) for c, paths in study.paths.items()}
    assert [d.SeriesDescription for d in first.values()] == ["T1 AX", "T2 AX", "FLAIR AX", "T1 POST GD"]
    assert {d.FrameOfReferenceUID for d in first.values()} == {study.frame_of_reference_uid}
    assert {d.StudyInstanceUID for d in first.values()} == {study.study_instance_uid}
    assert len({d.SeriesInstanceUID for d in first.values()}) == 4 and {d.Modality for d in first.values()} == {"MR"}
    assert len({(float(d.PixelSpacing[0]), float(d.SliceThickness)) for d in first.values()}) == 4
    assert study.labels.GetSize() == study.case.first.size and sitk.GetArrayViewFromImage(study.labels).any()


def test_a_case_missing_a_channel_or_a_dataset_naming_others_is_refused(tmp_path: Path) -> None:
    data = write_mr_cases(tmp_path / "data", [1, 2], matrix=32, slice_thickness=10.0)
    spec = load_spec(mr_model(tmp_path / "model"))
    assert [len(p.images) for p in check_cases(data / "imagesTr", data / "labelsTr", spec)] == [2, 2]
    swapped = load_spec(mr_model(tmp_path / "swapped", '["T2", "T1"]'))
    pair = check_cases(data / "imagesTr", data / "labelsTr", swapped)[0]
    assert (pair.image.name, pair.more[0].name) == ("mr1_0001.nii.gz", "mr1_0000.nii.gz")
    with pytest.raises(DatasetError, match="no FLAIR"):
        check_cases(data / "imagesTr", data / "labelsTr", load_spec(mr_model(tmp_path / "f", '["T1", "FLAIR"]')))
    with pytest.raises(DatasetError, match=r"takes one channel.*names 2 \(T1, T2\)"):
        check_cases(data / "imagesTr", data / "labelsTr", load_spec())
    (data / "imagesTr" / "mr2_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case mr2: no T2 channel file mr2_0001.nii.gz"):
        check_cases(data / "imagesTr", data / "labelsTr", spec)


@pytest.fixture(scope="module")
def trained_t1_t2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A T1 + T2 lung model trained briefly on MR phantoms with ``ainode train``: its model.toml."""
    tmp_path = tmp_path_factory.mktemp("t1-t2")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = write_mr_cases(tmp_path / "data", [11, 12, 13], matrix=96)
    model = mr_model(tmp_path / "source")
    out = tmp_path / "trained" / "weights.pt"
    result = runner.invoke(app, ["train", "--model", str(model), "--images", str(data / "imagesTr"), "--labels",
                                 str(data / "labelsTr"), "--phantoms", "0", "--validation-phantoms", "0",
                                 "--steps", "400", "--batch", "2", "--patch", "32", "--lr", "5e-3",
                                 "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.parent / "model.toml"


@pytest.mark.slow
def test_a_t1_t2_model_trained_briefly_on_mr_phantoms_finds_the_lungs(trained_t1_t2: Path) -> None:
    out = trained_t1_t2.parent / "weights.pt"
    written = load_spec(out.parent / "model.toml")
    assert written.channels == ("T1", "T2") and written.preprocess.normalize == "zscore"
    runtime = registry.load(registry.ModelEntry("mr-lung", "ainode", out.parent / "model.toml", device="cpu"))
    channels, truth = mr_images(make_mr_case(99, matrix=96))
    image = sitk.Compose(*channels)
    expected = sitk.GetArrayFromImage(truth) == 1
    trained = dice(segment(runtime, image) == 1, expected)
    torch.manual_seed(0)
    assert isinstance(runtime, UNetRuntime)
    runtime.network.load_state_dict(build_network(runtime.spec).state_dict())
    untrained = dice(segment(runtime, image) == 1, expected)
    print(f"lung Dice: trained {trained:.3f}, untrained {untrained:.3f}")
    assert trained >= 0.4 > untrained  # measured: 0.75 trained, 0.10 untrained (60 s)
    with pytest.raises(RejectedInput, match=r"takes 2 channels \(T1, T2\); the image given has 1"):
        segment(runtime, channels[0])



@pytest.mark.slow
def test_a_t1_t2_study_through_the_node_gives_one_seg_on_the_t1_slices(
        trained_t1_t2: Path, tmp_path: Path, pacs: StoreSCP, node_factory: Callable[..., NodeProcess]) -> None:
    """The two series of a study, sent by DCMTK to ``ainode serve``, come back as one SEG on T1's slices whose
    lungs match the phantom's, referencing both series."""
    study = write_mr_study(tmp_path / "study", seed=98, contrasts=("T1", "T2"), matrix=96)
    node = node_factory(pacs.port, extra=f"""
[models.mr-lung]
path = "{trained_t1_t2}"
[models.mr-lung.channels.T1]
series_description = "^T1"
[models.mr-lung.channels.T2]
series_description = "^T2"
""").serve()
    for contrast in ("T2", "T1"):
        assert storescu(node.port, study.paths[contrast]).returncode == 0
    wait_for(node.delivered, 180, lambda: f"no SEG and SR at the PACS; log: {node.log_text()}")
    seg = next(dcmread(p) for p in pacs.files() if dcmread(p, stop_before_pixels=True).Modality == "SEG")
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} == set(study.series_instance_uids.values())
    order = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.paths["T1"]]  # slice k
    truth = sitk.GetArrayFromImage(study.labels) == 1  # on T1's grid
    found = np.zeros_like(truth)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        found[order.index(source)] |= frame.astype(bool)
    score = dice(found, truth)
    print(f"lung Dice through the node: {score:.3f}")
    assert score >= 0.4, score
