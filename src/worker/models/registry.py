"""The models a node runs: each configured entry, its kind, and how that kind is described and loaded.

Describing a model reads only its own files (cheap, no torch), so the receiving node can decide which
models a series goes to; loading builds the runtime a worker runs. Heavy libraries (torch, MONAI,
nnunetv2, onnxruntime) are imported by the kind's module, when a model of that kind is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from db.errors import ConfigurationError
from worker.models.spec import ModelSpec

if TYPE_CHECKING:
    from worker.models.runtime import Runtime

Kind = Literal["ainode", "monai-bundle", "nnunet-v2", "torchscript", "onnx"]

# kind → (its describe function, its runtime class), as "module:name" so nothing heavy is imported early
KINDS: dict[str, tuple[str, str]] = {
    "ainode": ("worker.models.spec:describe_ainode", "worker.models.unet:UNetRuntime"),
    "monai-bundle": ("worker.models.bundle_spec:describe_bundle", "worker.models.bundle:BundleRuntime"),
    "nnunet-v2": ("worker.models.nnunet_spec:describe_nnunet", "worker.models.nnunet:NnUNetRuntime"),
    "torchscript": ("worker.models.spec:describe_torchscript", "worker.models.torchscript:TorchScriptRuntime"),
    "onnx": ("worker.models.spec:describe_onnx", "worker.models.onnx:OnnxRuntime"),
}


@dataclass(frozen=True)
class ModelEntry:
    """One ``[models.NAME]`` of the configuration; ``path`` None means the bundled demo model."""

    name: str
    kind: str
    path: Path | None
    device: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)  # the kind's own keys (bundle overrides, folds…)


def _resolve(target: str) -> object:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _kind(entry: ModelEntry) -> tuple[str, str]:
    if entry.kind not in KINDS:
        raise ConfigurationError(f"model {entry.name}: kind {entry.kind!r} is not available here "
                                 f"(known: {', '.join(sorted(KINDS))})")
    return KINDS[entry.kind]


def describe(entry: ModelEntry) -> ModelSpec:
    """What the model says about itself; ``ConfigurationError`` naming the model when its files are wrong."""
    describer = cast(Callable[[Path | None, Mapping[str, Any]], ModelSpec], _resolve(_kind(entry)[0]))
    try:
        return describer(entry.path, entry.options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"model {entry.name}: {exc}") from exc


def load(entry: ModelEntry, threads: int | None = None) -> Runtime:
    """The model, loaded on its device and checked (weights that fit, a device that exists)."""
    spec = describe(entry)
    runtime_class = cast("Callable[..., Runtime]", _resolve(_kind(entry)[1]))
    try:
        return runtime_class(spec, device=entry.device, threads=threads)
    except ConfigurationError as exc:
        raise ConfigurationError(f"model {entry.name}: {exc}") from exc


def resolved_device(name: str) -> str:
    """The device ``name`` means here (``auto``: CUDA when present); refused when CUDA is asked for and absent."""
    from worker.models.runtime import torch_device

    return torch_device(name, None)
