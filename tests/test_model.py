"""The model file, the adapter, and the bundled demo model's quality on fresh phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.errors import ConfigurationError
from worker.models.spec import DEMO_MODEL, load_spec
from worker.models.unet import UNetRuntime


def write_model(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_the_demo_model_file_is_valid_and_its_weights_are_small() -> None:
    spec = load_spec()
    assert [label.name for label in spec.labels] == ["Lung"]
    assert spec.weights_path.stat().st_size < 20 * 1024 * 1024
    assert len(spec.weights_digest()) == 64


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (('value = 1\n', 'value = 3\n'), "label values [3] must be 1..1"),
        (('spacing = [3.0, 3.0, 3.0]', 'spacing = [3.0, 0, 3.0]'), "spacing (3.0, 0.0, 3.0) must be positive"),
        (('color = [128, 174, 128]', 'color = [300, 0, 0]'), "colour (300, 0, 0) must be three values in 0..255"),
        (('strides = [2, 2, 2, 2]', 'strides = [2, 2]'), "must have one entry fewer than channels"),
        (('modality = "CT"', 'modality = "XA"'), "modality"),
    ],
)
def test_a_bad_model_file_names_the_key(tmp_path: Path, replace: tuple[str, str], expected: str) -> None:
    text = DEMO_MODEL.read_text()
    assert replace[0] in text
    with pytest.raises(ConfigurationError) as caught:
        load_spec(write_model(tmp_path, text.replace(replace[0], replace[1], 1)))
    assert expected in str(caught.value)


def test_missing_or_mismatched_weights_are_configuration_errors(tmp_path: Path) -> None:
    text = DEMO_MODEL.read_text()
    with pytest.raises(ConfigurationError, match="do not exist"):
        UNetRuntime(load_spec(write_model(tmp_path, text)), device="cpu")
    (tmp_path / "weights.pt").write_bytes(DEMO_MODEL.with_name("weights.pt").read_bytes())
    wider = text.replace("channels = [16, 32, 64, 128, 256]", "channels = [8, 16, 32, 64, 128]")
    with pytest.raises(ConfigurationError, match="do not fit the architecture"):
        UNetRuntime(load_spec(write_model(tmp_path, wider)), device="cpu")


def test_asking_for_cuda_without_it_is_a_configuration_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigurationError, match="no CUDA device"):
        UNetRuntime(load_spec(), device="cuda")


@pytest.mark.slow
def test_the_demo_model_finds_lungs_on_fresh_phantoms_and_none_where_there_are_none() -> None:
    from training.evaluate import evaluate

    scores = evaluate(load_spec(), phantoms=4, seed=99, regions=["chest", "abdomen", "head", "pelvis"], device="cpu")
    print([(s.name, s.dice["Lung"], round(s.found_ml["Lung"], 1)) for s in scores])
    chest, *without = scores
    assert chest.dice["Lung"] is not None and chest.dice["Lung"] >= 0.90
    assert all(s.truth_ml["Lung"] == 0 and s.found_ml["Lung"] < 5.0 for s in without)


@pytest.mark.slow
def test_the_demo_model_segments_the_lungs_of_a_real_chest_ct() -> None:
    """A real chest CT (LCTSC) the bundled model trained on: a check that the committed weights are the
    trained ones; the cross-validated figures (cases it never saw) are in the README."""
    from conftest import SHARED_DATA
    from training.evaluate import evaluate
    from training.nifti import check_cases

    folder = SHARED_DATA / "real-chest-ct"
    spec = load_spec()
    pairs = [p for p in check_cases(folder / "imagesTr", folder / "labelsTr", spec) if p.name == "lctsc-S1-101"]
    (score,) = evaluate(spec, pairs, device="cpu")
    assert score.dice["Lung"] is not None and score.dice["Lung"] >= 0.95, score
