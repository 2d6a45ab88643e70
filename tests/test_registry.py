"""The model registry: entries of the configuration described cheaply and loaded as runtimes, every refusal
naming the model and the reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ainode.config import load_settings
from db.errors import ConfigurationError
from worker.models import registry
from worker.models.runtime import segment
from worker.models.spec import DEMO_MODEL, load_spec


def test_the_default_configuration_runs_the_bundled_demo_model() -> None:
    (entry,) = load_settings(None).model_entries()
    assert (entry.name, entry.kind, entry.path) == ("demo", "ainode", None)
    runtime = registry.load(registry.ModelEntry("demo", "ainode", None, "cpu"))
    assert runtime.spec.name == load_spec().name == "ainode-demo-lung-ct" and runtime.device == "cpu"
    image = sitk.GetImageFromArray(np.full((20, 40, 40), -800, dtype=np.int16))
    image.SetSpacing((4.0, 4.0, 8.0))
    assert segment(runtime, image).shape == (20, 40, 40)


@pytest.mark.parametrize(("entry", "reason"), [
    (registry.ModelEntry("lungs", "ainode", Path("/nowhere/model.toml")), "model lungs: model file '/nowhere"),
    (registry.ModelEntry("organs", "tensorflow", Path("/x")), "model organs: kind 'tensorflow' is not available"),
])
def test_a_wrong_entry_is_refused_naming_the_model(entry: registry.ModelEntry, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        registry.describe(entry)


def test_weights_that_do_not_fit_are_refused_at_load_naming_the_model(tmp_path: Path) -> None:
    wider = tmp_path / "model.toml"
    text = re.sub(r"(?m)^channels = \[16, ", "channels = [24, ", DEMO_MODEL.read_text())
    wider.write_text(text.replace('weights = "weights.pt"', f'weights = "{DEMO_MODEL.with_name("weights.pt")}"'))
    with pytest.raises(ConfigurationError, match="model wide: .*do not fit the architecture"):
        registry.load(registry.ModelEntry("wide", "ainode", wider, "cpu"))


def test_several_models_each_with_its_own_output_series(tmp_path: Path) -> None:
    config = tmp_path / "ainode.toml"
    config.write_text("""
[models.lung]
path = "%s"
seg_series_number = 911
[models.other]
path = "%s"
""" % (DEMO_MODEL, DEMO_MODEL))
    settings = load_settings(config)
    assert [e.name for e in settings.model_entries()] == ["lung", "other"]
    assert (settings.output_settings("lung").seg_series_number, settings.output_settings("other").seg_series_number,
            settings.output_settings("other").sr_series_number) == (911, 901, 902)
