"""Training and evaluation on NIfTI folders: bad data refused before training with the case named, a run
that resumes where it stopped, k folds that never score a case with a model that trained on it, and an
evaluation report with its table and overlays. A tiny network keeps each run to seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from typer.testing import CliRunner

from ainode.cli import app
from conftest import SHARED_DATA
from training.cases import PreparedCase, prepare_real
from training.crossval import cross_validate, deal_folds
from training.evaluate import evaluate
from training.nifti import DatasetError, check_cases
from training.train import TrainingPlan, checkpoint_path, train
from worker.models.spec import DEMO_MODEL, UNetSpec, load_spec

REAL = SHARED_DATA / "real-chest-ct"
runner = CliRunner()


def tiny_model(folder: Path) -> UNetSpec:
    """The demo model's labels on a two-level, 4-channel network at 6 mm: seconds per run."""
    text = DEMO_MODEL.read_text()
    text = text.replace("channels = [16, 32, 64, 128, 256]", "channels = [4, 8]")
    text = text.replace("strides = [2, 2, 2, 2]", "strides = [2]")
    text = text.replace("spacing = [3.0, 3.0, 3.0]", "spacing = [6.0, 6.0, 6.0]")
    text = text.replace("roi_size = [96, 96, 96]", "roi_size = [32, 32, 32]")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(text)
    return load_spec(folder / "model.toml")


def write_case(folder: Path, name: str, labels: np.ndarray | None = None, shape: tuple[int, int, int] = (20, 24, 24),
               spacing: tuple[float, float, float] = (2.0, 2.0, 3.0), label_spacing: tuple[float, float, float] | None
               = None, image_name: str | None = None) -> None:
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.full(shape, -500, dtype=np.int16))
    image.SetSpacing(spacing)
    label = sitk.GetImageFromArray(labels if labels is not None else np.zeros(shape, dtype=np.uint8))
    label.SetSpacing(label_spacing or spacing)
    sitk.WriteImage(image, str(folder / "imagesTr" / (image_name or f"{name}.nii.gz")))
    sitk.WriteImage(label, str(folder / "labelsTr" / f"{name}.nii.gz"))


def refusal(folder: Path) -> str:
    with pytest.raises(DatasetError) as caught:
        check_cases(folder / "imagesTr", folder / "labelsTr", load_spec())
    return str(caught.value)


def test_nnunet_channel_names_pair_with_their_labels(tmp_path: Path) -> None:
    write_case(tmp_path, "case_a", image_name="case_a_0000.nii.gz")
    write_case(tmp_path, "case_b")
    pairs = check_cases(tmp_path / "imagesTr", tmp_path / "labelsTr", load_spec())
    assert [(p.name, p.image.name) for p in pairs] == [("case_a", "case_a_0000.nii.gz"), ("case_b", "case_b.nii.gz")]


def test_bad_training_data_is_refused_naming_the_case_and_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir(parents=True)
    assert "holds no NIfTI file" in refusal(tmp_path / "empty") and "imagesTr" in refusal(tmp_path / "empty")

    write_case(tmp_path / "grids", "ok")
    write_case(tmp_path / "grids", "skewed", label_spacing=(2.0, 2.0, 2.5))
    assert refusal(tmp_path / "grids") == (
        "case skewed: the image grid (24x24x20 at 2x2x3 mm, origin (0.00, 0.00, 0.00)) and the label grid "
        "(24x24x20 at 2x2x2.5 mm, origin (0.00, 0.00, 0.00)) differ")

    values = np.zeros((20, 24, 24), dtype=np.uint8)
    values[5:10, 5:10, 5:10] = 2
    write_case(tmp_path / "values", "two", labels=values)
    assert refusal(tmp_path / "values") == ("case two: label values [2] in two.nii.gz are not declared by model "
                                            "ainode-demo-lung-ct (declared: [0, 1])")

    write_case(tmp_path / "orphan", "paired")
    write_case(tmp_path / "orphan", "lonely")
    (tmp_path / "orphan" / "labelsTr" / "lonely.nii.gz").unlink()
    assert refusal(tmp_path / "orphan").startswith("case lonely: image lonely.nii.gz has no label in")

    write_case(tmp_path / "broken", "bad")
    (tmp_path / "broken" / "imagesTr" / "bad.nii.gz").write_bytes(b"not an image")
    assert refusal(tmp_path / "broken").startswith("case bad: ") and "cannot be read as an image" in \
        refusal(tmp_path / "broken")


def test_ainode_train_refuses_bad_data_before_training_starts(tmp_path: Path) -> None:
    values = np.zeros((20, 24, 24), dtype=np.uint8)
    values[0, 0, 0] = 7
    write_case(tmp_path / "data", "seven", labels=values)
    out = tmp_path / "model" / "weights.pt"
    result = runner.invoke(app, ["train", "--out", str(out), "--images", str(tmp_path / "data" / "imagesTr"),
                                 "--labels", str(tmp_path / "data" / "labelsTr"), "--phantoms", "0",
                                 "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert "training data refused: case seven: label values [7] in seven.nii.gz" in " ".join(result.output.split())
    assert not out.exists() and not checkpoint_path(out).exists()


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNetSpec, list[PreparedCase], Path]:
    """Three small real chest CTs (COPDGene and two resampled ones) linked into a folder of their own."""
    folder = tmp_path_factory.mktemp("real")
    spec = tiny_model(folder / "model")
    for kind in ("imagesTr", "labelsTr"):
        (folder / kind).mkdir()
        for name in ("cip-10002K", "imlab-002", "imlab-004"):
            (folder / kind / f"{name}.nii.gz").symlink_to(REAL / kind / f"{name}.nii.gz")
    pairs = check_cases(folder / "imagesTr", folder / "labelsTr", spec)
    return spec, prepare_real(pairs, spec, folder / "cache"), folder


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path, real_cases) -> None:  # type: ignore[no-untyped-def]
    spec, real, _ = real_cases
    plan = TrainingPlan(steps=6, batch=1, patch=32, checkpoint_every=2, validate_every=3)
    torch.set_num_threads(1)
    whole = train(spec, tmp_path / "whole" / "weights.pt", real, [], real[:1], plan)

    def stop_at_four(line: str) -> None:
        if line.startswith("step 4 of 6"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "parts" / "weights.pt", real, [], real[:1], plan, log=stop_at_four)
    assert not (tmp_path / "parts" / "weights.pt").exists()
    assert torch.load(checkpoint_path(tmp_path / "parts" / "weights.pt"), weights_only=False)["step"] == 4
    lines: list[str] = []
    resumed = train(spec, tmp_path / "parts" / "weights.pt", real, [], real[:1], plan, resume=True, log=lines.append)
    assert lines[0].startswith("resuming") and "at step 4 of 6" in lines[0]
    a = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "weights.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "the resumed run ends where the whole run does"
    assert resumed.final_loss == pytest.approx(whole.final_loss, rel=1e-5)
    assert set(whole.validation) == {"Lung Dice"}
    with pytest.raises(ValueError, match="another plan or other cases"):
        train(spec, tmp_path / "parts" / "weights.pt", real, [], [], TrainingPlan(steps=8, batch=1, patch=32),
              resume=True)


def test_folds_hold_every_case_once_and_spread_each_source() -> None:
    names = [c["case"] for c in json.loads((REAL / "cases.json").read_text())]
    folds = deal_folds(names, 4)
    assert sorted(n for f in folds for n in f) == sorted(names)
    assert [len(f) for f in folds] == [3, 3, 3, 3]
    assert all(sum(n.startswith("lctsc") for n in f) >= 1 and sum(n.startswith("imlab") for n in f) == 1
               for f in folds)
    with pytest.raises(ValueError, match="13 folds of 12 cases"):
        deal_folds(names, 13)


def test_cross_validation_scores_each_case_with_a_model_that_never_trained_on_it(
        tmp_path: Path, real_cases) -> None:  # type: ignore[no-untyped-def]
    spec, real, folder = real_cases
    pairs = check_cases(folder / "imagesTr", folder / "labelsTr", spec)
    plan = TrainingPlan(steps=2, batch=1, patch=32, validate_every=2)
    scores = cross_validate(spec, pairs, real, [], [], tmp_path / "cv", 3, plan, device="cpu")
    assert sorted(s.name for s in scores) == sorted(p.name for p in pairs)
    for score in scores:
        trained_on = torch.load(checkpoint_path(tmp_path / "cv" / f"fold-{score.fold}" / "weights.pt"),
                                weights_only=False)["cases"]
        assert score.name not in trained_on and len(trained_on) == 2
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "3-fold cross-validation" in report and all(f"| {s.name} | real | {s.fold} |" in report for s in scores)
    assert all((tmp_path / "cv" / s.overlay).is_file() for s in scores if s.overlay)
    again = cross_validate(spec, pairs, real, [], [], tmp_path / "cv", 3, plan, device="cpu")  # no training again
    assert [s.dice for s in again] == [s.dice for s in scores]


def test_evaluation_writes_a_report_with_the_table_and_an_overlay_per_case(
        tmp_path: Path, real_cases) -> None:  # type: ignore[no-untyped-def]
    spec, real, folder = real_cases
    train(spec, spec.weights_path, real, [], [], TrainingPlan(steps=2, batch=1, patch=32))
    pairs = check_cases(folder / "imagesTr", folder / "labelsTr", spec)[:1]
    result = runner.invoke(app, ["evaluate", "--model", str(spec.path), "--images", str(folder / "imagesTr"),
                                 "--labels", str(folder / "labelsTr"), "--phantoms", "1", "--regions", "head",
                                 "--out", str(tmp_path / "report"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    names = [c["name"] for c in data["cases"]]
    assert names[:3] == ["cip-10002K", "imlab-002", "imlab-004"] and names[3].startswith("phantom-head-")
    head = data["cases"][3]
    assert head["truth_ml"]["Lung"] == 0 and head["kind"] == "head"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| case | kind | Lung Dice | Lung reference mL | Lung found mL | Lung error mL |" in report
    assert "![cip-10002K](cip-10002K.png)" in report
    overlay = Image.open(tmp_path / "report" / "cip-10002K.png")
    # axial (267 mm wide, 267 high) and coronal (267 wide, 79 slices of 4 mm high) at 1 px/mm, side by side
    assert overlay.size[0] == pytest.approx(267 * 2 + 10, abs=4) and overlay.size[1] >= 267
    (score,) = evaluate(spec, pairs, device="cpu")
    assert score.truth_ml["Lung"] == pytest.approx(4554, rel=0.01)  # cases.json
    shutil.rmtree(tmp_path / "report")
