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

from db.errors import ConfigurationError, TransientFailure
from worker.models.onto_source import labels_from_probabilities
from worker.models.spec import ModelSpec

# what runtimes say when memory runs out: PyTorch (CPU and CUDA), ONNX Runtime, C++ allocators
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "failed to allocate", "bad_alloc", "cannot allocate memory")


class ModelFailure(TransientFailure):
    """The model ran but gave nothing usable (NaN, a wrong shape, labels it does not have) or ran out of
    memory: its job fails with the reason, retried as configured; other models' jobs are not affected."""


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


def torch_device(name: str, threads: int | None) -> str:
    """The device a PyTorch runtime runs on (as ``choose_device`` decides), with its CPU threads limited
    when the configuration says so. torch is imported here, not above, for the runtimes that do not use it."""
    import torch

    device = choose_device(name, torch.cuda.is_available())
    if threads:
        torch.set_num_threads(threads)
    return device


def check(output: ModelOutput, spec: ModelSpec) -> None:
    """Refuse an output no SEG may be made of, whatever kind of model produced it."""
    where = f"model {spec.name} {spec.version}"
    size = tuple(reversed(output.grid.GetSize()))
    if output.probabilities is not None:
        classes = max(label.value for label in spec.labels) + 1
        shape = tuple(output.probabilities.shape)
        if len(shape) != 4 or shape[1:] != size or shape[0] != classes:
            raise ModelFailure(f"{where} returned probabilities of shape {shape}; expected ({classes}, "
                               f"{', '.join(map(str, size))}) (classes, z, y, x) on its grid")
        if not np.isfinite(output.probabilities).all():
            raise ModelFailure(f"{where} returned NaN or infinite probabilities")
        return
    if output.labels is None:
        raise ModelFailure(f"{where} returned neither probabilities nor labels")
    labels = output.labels
    if tuple(labels.shape) != size:
        raise ModelFailure(f"{where} returned labels of shape {tuple(labels.shape)}; expected "
                           f"({', '.join(map(str, size))}) (z, y, x) on its grid")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ModelFailure(f"{where} returned NaN or infinite labels")
    if labels.dtype.kind not in "biuf":
        raise ModelFailure(f"{where} returned labels of type {labels.dtype}")
    low, high = (labels.min(), labels.max()) if labels.size else (0, 0)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.rint(labels)):
        raise ModelFailure(f"{where} returned label values {low:g}..{high:g} that are not whole numbers")
    if all(label.values is None for label in spec.labels):
        top = max(label.value for label in spec.labels)
        if low < 0 or high > top:
            raise ModelFailure(f"{where} returned label values {low:g}..{high:g}; its labels are 1..{top} (0: none)")
        return
    known = sorted({0, *(v for label in spec.labels for v in label.mask_values)})
    if low < 0 or high > known[-1] or not np.isin(labels, known).all():
        found = np.unique(labels)
        stray = [f"{v:g}" for v in found[~np.isin(found, known)]]
        raise ModelFailure(f"{where} returned label values {', '.join(stray)}; its labels are made of "
                           f"{', '.join(map(str, known))} (0: none)")


def to_source(output: ModelOutput, source: sitk.Image) -> np.ndarray:
    """Labels (z, y, x, uint8) on the exact grid of ``source``.

    Probabilities are interpolated, not labels, which keeps boundaries smooth at sub-voxel precision
    (``onto_source``: a slab at a time, memory bounded); labels are taken by nearest neighbour.
    """
    if output.probabilities is not None:
        return labels_from_probabilities(output.probabilities, output.grid, source)
    if output.labels is None:
        raise ValueError("a model output needs probabilities or labels")
    labels = sitk.GetImageFromArray(output.labels.astype(np.uint8))
    labels.CopyInformation(output.grid)
    if output.grid is source:  # already on the source grid (nnU-Net, bundles with Invertd): nothing to resample
        return sitk.GetArrayFromImage(labels)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(source)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetOutputPixelType(sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampler.Execute(labels))


def segment(runtime: Runtime, image: sitk.Image) -> np.ndarray:
    """Run the model on ``image`` and return its labels on that image's own grid, its output checked."""
    return to_source(run(runtime, image), image)


def run(runtime: Runtime, image: sitk.Image) -> ModelOutput:
    """Run the model on ``image``: its output checked, running out of memory named as such."""
    spec = runtime.spec
    try:
        output = runtime.infer(image)
    except MemoryError as exc:
        raise ModelFailure(f"model {spec.name} {spec.version} ran out of memory on {runtime.device}") from exc
    except Exception as exc:
        text = str(exc)
        if any(words in text.lower() for words in _OUT_OF_MEMORY):
            raise ModelFailure(f"model {spec.name} {spec.version} ran out of memory on {runtime.device}: "
                               f"{text.splitlines()[0][:200]}") from exc
        raise
    check(output, spec)
    return output
