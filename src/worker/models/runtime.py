"""The one interface every model runtime implements, and the one way its output returns to the source.

A runtime takes the assembled image with its geometry and returns what the model produced on the grid it
worked on (class probabilities, or labels). ``segment`` maps that back onto the exact source grid, the
same way for every kind of model, so the pipeline never needs to know which kind it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from db.errors import ConfigurationError
from worker.models.spec import ModelSpec


@dataclass(frozen=True)
class ModelOutput:
    """A model's answer on ``grid`` (an image that carries only geometry): class probabilities
    (C, z, y, x), class 0 the background, or label values (z, y, x)."""

    grid: sitk.Image
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None


class Runtime(Protocol):
    """A loaded model, ready to run on the device it names."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def device(self) -> str: ...

    def infer(self, image: sitk.Image) -> ModelOutput: ...


def choose_device(name: str, cuda_available: bool) -> str:
    """``auto`` takes CUDA when present; naming a device that is absent is a configuration error."""
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    if name.startswith("cuda") and not cuda_available:
        raise ConfigurationError(f"worker.device {name!r} asked for CUDA, but no CUDA device is present")
    return name


def to_source(output: ModelOutput, source: sitk.Image) -> np.ndarray:
    """Labels (z, y, x, uint8) on the exact grid of ``source``.

    Probabilities are interpolated, not labels, which keeps boundaries smooth at sub-voxel precision;
    labels are taken by nearest neighbour.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(source)
    resampler.SetUseNearestNeighborExtrapolator(True)
    if output.probabilities is not None:
        vector = sitk.GetImageFromArray(np.moveaxis(output.probabilities.astype(np.float32), 0, -1), isVector=True)
        vector.CopyInformation(output.grid)
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
        on_source = sitk.GetArrayFromImage(resampler.Execute(vector))
        return np.argmax(on_source, axis=-1).astype(np.uint8)
    if output.labels is None:
        raise ValueError("a model output needs probabilities or labels")
    labels = sitk.GetImageFromArray(output.labels.astype(np.uint8))
    labels.CopyInformation(output.grid)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetOutputPixelType(sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampler.Execute(labels))


def segment(runtime: Runtime, image: sitk.Image) -> np.ndarray:
    """Run the model on ``image`` and return its labels on that image's own grid."""
    return to_source(runtime.infer(image), image)
