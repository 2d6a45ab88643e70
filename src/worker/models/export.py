"""``ainode export``: an ``ainode`` model (MONAI ``UNet`` + ``model.toml``) written as TorchScript or ONNX, with a
description beside it (``model.toml`` naming the kind and the file) that the ``torchscript`` and ``onnx``
kinds run exactly as the original: same grid, window, sliding window and labels.

ONNX Runtime's ``InstanceNormalization`` sums in float32 in one pass; over a 96³ window whose channel
mean is large it drifts by ~1e-3 in the logits (measured on the demo model; PyTorch stays within 2e-5 of a
float64 run). The export therefore writes each instance norm as mean and variance computed in float64,
two passes, which brings ONNX Runtime within the 1e-4 parity and costs no measurable time.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from db.errors import ConfigurationError
from worker.models.spec import ExportedSpec, UNetSpec

Format = Literal["torchscript", "onnx"]
FILE_NAMES: dict[str, str] = {"torchscript": "model.ts", "onnx": "model.onnx"}


class InstanceNorm64(torch.nn.Module):
    """``InstanceNorm3d`` (no running statistics) with its statistics in float64, for the ONNX graph."""

    def __init__(self, norm: torch.nn.modules.instancenorm._InstanceNorm) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise ConfigurationError("an instance norm with running statistics cannot be exported as ONNX here")
        self.eps = float(norm.eps)
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        wide = x.double()
        centred = wide - wide.mean(dim=dims, keepdim=True)
        y = (centred * torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + self.eps)).float()
        if self.weight is not None and self.bias is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def with_precise_norms(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` whose instance norms are ``InstanceNorm64``."""
    network = copy.deepcopy(network)
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm):
                setattr(module, name, InstanceNorm64(child))
    return network.eval()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"cannot write {value!r} to TOML")


def description(spec: UNetSpec, kind: Format, weights: str, digest: str) -> str:
    """The ``model.toml`` of the exported model: the source's description with its kind and file."""
    data = spec.model_dump(mode="json", exclude={"architecture", "weights", "path"})
    head = [f"# Exported by `ainode export` from {spec.name} {spec.version} ({str(spec.path)!r}).",
            f"kind = {_toml(kind)}", f"weights = {_toml(weights)}"]
    source = ["", "[exported_from]", 'kind = "ainode"', f"name = {_toml(spec.name)}",
              f"version = {_toml(spec.version)}", f"weights_sha256 = {_toml(digest)}"]
    return _model_toml(head, data, source)


def model_file(spec: UNetSpec, weights: str, comment: str) -> str:
    """An ``ainode`` kind's ``model.toml`` for ``spec`` with its weights in ``weights`` (what ``ainode train``
    writes beside the weights it trained)."""
    data = spec.model_dump(mode="json", exclude={"weights", "path"})
    return _model_toml([f"# {comment}", f"weights = {_toml(weights)}"], data, [])


def _model_toml(head: list[str], data: dict[str, Any], extra: list[str]) -> str:
    lines, tables = list(head), []
    for key, value in data.items():
        if key == "labels":
            continue
        if isinstance(value, dict):
            tables += ["", f"[{key}]"] + [f"{k} = {_toml(v)}" for k, v in value.items() if v is not None]
        elif value is not None and value != [] and value != ():
            lines.append(f"{key} = {_toml(value)}")
    tables += extra
    for label in data["labels"]:
        tables += ["", "[[labels]]"] + [f"{k} = {_toml(v)}" for k, v in label.items() if v is not None]
    return "\n".join(lines + tables) + "\n"


def example_window(spec: UNetSpec, seed: int = 0) -> torch.Tensor:
    """A (1, channels, roi) window of smooth values in [0, 1], like a windowed CT, for tracing and parity
    checks."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, spec.in_channels, *(max(2, s // 8) for s in spec.inference.roi_size)), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=spec.inference.roi_size, mode="trilinear")


def export(spec: UNetSpec, network: torch.nn.Module, kind: Format, out: Path) -> Path:
    """Write ``out/model.ts`` or ``out/model.onnx`` and ``out/model.toml``; the description's path."""
    out.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    target = out / FILE_NAMES[kind]
    window = example_window(spec)
    if kind == "torchscript":
        try:
            scripted = torch.jit.script(network)
        except Exception:  # a network TorchScript cannot compile is traced: the same graph for fixed windows
            scripted = torch.jit.trace(network, window)
        scripted.save(str(target))
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        try:
            torch.onnx.export(with_precise_norms(network), (window,), str(target), dynamo=True, external_data=False,
                              input_names=["image"], output_names=["logits"], dynamic_shapes=[{0: batch}],
                              verbose=False)
        except ImportError as exc:
            raise ConfigurationError(f"exporting ONNX needs onnx and onnxscript: pip install 'ainode[onnx]' ({exc})") \
                from exc
    digest = spec.weights_digest()
    path = out / "model.toml"
    path.write_text(description(spec, kind, target.name, digest))
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quantize_int8(spec: ExportedSpec, windows: Iterable[np.ndarray], out: Path) -> Path:
    """An int8 copy of an exported ONNX model (static QDQ quantization calibrated on ``windows``, each a
    (1, channels, roi) float32 array from real or phantom images) with its description; the description's path."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(windows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"image": item.astype(np.float32)}

    out.mkdir(parents=True, exist_ok=True)
    target = out / "model-int8.onnx"
    quantize_static(str(spec.weights_path), str(target), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    text = spec.path.read_text().replace(f'weights = "{spec.weights}"', f'weights = "{target.name}"', 1)
    path = out / "model-int8.toml"
    path.write_text(text.replace(f"version = \"{spec.version}\"", f"version = \"{spec.version}-int8\"", 1))
    return path
