"""Inputs made of several series: channels configured per model and checked against it, the channels'
volumes checked to lie in one frame of reference and stacked on the first channel's grid (real phantom
series read from DICOM files)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ainode.config import Settings
from ainode.routing import channel_rules
from conftest import phantom_series
from db.errors import ConfigurationError, RejectedInput
from db.routing import SettledSeries
from worker.assembly import channels
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.spec import load_spec

TWO = load_spec().model_copy(update={"channels": ("T1", "T2"), "modality": "MR"})
WHEN = {"T1": {"series_description": "(?i)^t1"}, "T2": {"series_description": "(?i)^t2"}}


def mr(description: str) -> SettledSeries:
    return SettledSeries("1.2.3." + description, "MR", description)


def test_channels_are_picked_by_their_conditions_in_the_models_order() -> None:
    inputs = channel_rules({"mr": TWO, "ct": load_spec()}, {"mr": {"T2": WHEN["T2"], "T1": WHEN["T1"]}}, 120.0)
    plan = inputs.plan("mr", "brain", 5)
    assert [c.name for c in plan.channels] == ["T1", "T2"] and plan.channel_wait_seconds == 120.0
    t1, t2 = plan.channels
    assert t1.failing(mr("T1 AX")) is None and t2.failing(mr("T2 AX")) is None
    assert t1.failing(mr("T2 AX")) == "SeriesDescription 'T2 AX' does not match /(?i)^t1/"
    assert inputs.plan("ct").channels == (), "a one-series model plans as before"


@pytest.mark.parametrize(("configured", "message"), [
    ({}, r"models.mr.channels: .* takes 2 series \(T1, T2\).*missing: T1, T2"),
    ({"mr": {"T1": WHEN["T1"]}}, r"missing: T2"),
    ({"mr": {**WHEN, "PD": {}}}, r"unknown: PD"),
    ({"mr": WHEN, "ct": {"T1": WHEN["T1"]}}, r"models.ct.channels: .* takes one series"),
    ({"mr": {"T1": {"colour": "red"}, "T2": WHEN["T2"]}}, r"models.mr.channels.T1.when.colour: unknown condition"),
])
def test_channels_that_do_not_fit_the_model_stop_start_up_naming_them(configured: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        channel_rules({"mr": TWO, "ct": load_spec()}, configured)


def test_a_bad_channel_condition_is_refused_when_the_configuration_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"models.brats.channels.FLAIR.when.series_description: .* not a regular"):
        Settings.model_validate({"models": {"brats": {"kind": "ainode", "channels": {
            "FLAIR": {"series_description": "(unclosed"}}}}})


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume]:
    """One phantom scanned twice: 128² at 3 mm slices and 96² at 5 mm, one frame of reference."""
    folder = tmp_path_factory.mktemp("channels")
    fine = phantom_series(folder / "fine", seed=7, matrix=128, slice_thickness=3.0, orientation="HFS")
    coarse = phantom_series(folder / "coarse", seed=7, matrix=96, slice_thickness=5.0, orientation="HFS")
    return assemble(fine.paths, 16), assemble(coarse.paths, 16)


def test_channels_are_stacked_on_the_first_channels_grid(two_grids: tuple[Volume, Volume]) -> None:
    fine, coarse = two_grids
    assert fine.image.GetSize() != coarse.image.GetSize()
    assert channels.frame_of_reference(["A", "B"], [fine, coarse]) == str(fine.datasets[0].FrameOfReferenceUID)
    stacked = channels.stack([fine, coarse])
    assert stacked.GetNumberOfComponentsPerPixel() == 2 and stacked.GetSize() == fine.image.GetSize()
    assert np.allclose(stacked.GetOrigin(), fine.image.GetOrigin()) and stacked.GetSpacing() == fine.image.GetSpacing()
    array = sitk.GetArrayFromImage(stacked)  # (z, y, x, channel)
    assert np.array_equal(array[..., 0], sitk.GetArrayFromImage(fine.image).astype(np.float32))
    inside = array[..., 1] != 0
    correlation = np.corrcoef(array[..., 0][inside], array[..., 1][inside])[0, 1]
    assert inside.mean() > 0.8 and correlation > 0.9, (inside.mean(), correlation)
    assert "A 128x128" in channels.describe(["A", "B"], [fine, coarse])


def test_channels_in_different_frames_of_reference_are_refused_naming_them(
        two_grids: tuple[Volume, Volume]) -> None:
    fine, coarse = two_grids
    frames = []
    for frame in coarse.frames:
        dataset = copy.deepcopy(frame.dataset)  # a shallow copy shares its elements with the fixture's
        dataset.FrameOfReferenceUID = "1.2.3.999"
        frames.append(dataclasses.replace(frame, dataset=dataset))
    elsewhere = dataclasses.replace(coarse, frames=tuple(frames))
    with pytest.raises(RejectedInput, match=r"2 frames of reference \(A in .*; B in 1.2.3.999\)"):
        channels.frame_of_reference(["A", "B"], [fine, elsewhere])
