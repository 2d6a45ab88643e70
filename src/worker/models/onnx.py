"""The ``onnx`` kind: a network in ONNX (``ainode export --format onnx``) run by ONNX Runtime on ainode's own
grid, window by window, exactly as the model it was exported from.

ONNX Runtime picks its hardware by execution provider: CUDA's for a ``cuda`` device, the CPU's otherwise,
or the list in ``providers`` (e.g. TensorRT first). onnxruntime is an optional extra (``ainode[onnx]``),
imported only when a runtime is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from db.errors import ConfigurationError
from worker.models.body import restrict_to_body
from worker.models.grid import expect_channels, to_model_space
from worker.models.runtime import ModelOutput
from worker.models.spec import ExportedSpec
from worker.models.torchscript import PROBE, probe_channels
from worker.models.unet import sliding_probabilities


def choose_providers(device: str, available: Sequence[str], asked: Sequence[str] | None = None
                     ) -> tuple[str, list[str | tuple[str, dict[str, Any]]]]:
    """(device, providers) for ONNX Runtime: ``auto`` takes CUDA when ONNX Runtime has it; CUDA asked for
    where it has none (the CPU-only ``onnxruntime`` package, no driver) is a configuration error."""
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    index = int(device.partition(":")[2] or 0)
    wanted = list(asked) if asked else (["CUDAExecutionProvider"] if device.startswith("cuda") else [])
    wanted += ["CPUExecutionProvider"]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ConfigurationError(f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                                 f"device {device!r} cannot be used (pip install onnxruntime-gpu for CUDA)")
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    if device == "cpu" and gpu & set(wanted):
        raise ConfigurationError(f"providers {list(asked or [])} run on a GPU, but the device is cpu")
    options = [(name, {"device_id": index}) if name in gpu else name for name in dict.fromkeys(wanted)]
    return device, options


class OnnxRuntime:
    """An ONNX network in an ``InferenceSession``: an implementation of ``runtime.Runtime``."""

    def __init__(self, spec: ExportedSpec, device: str = "auto", threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ConfigurationError(f"an onnx model needs ONNX Runtime: pip install 'ainode[onnx]' ({exc})") from exc
        self.spec = spec
        self.device, chosen = choose_providers(device, onnxruntime.get_available_providers(),
                                               spec.providers or None)
        path = spec.weights_path
        if not path.is_file():
            raise ConfigurationError(f"model weights {str(path)!r} do not exist")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime's own exception types are not importable by a stable name
            raise ConfigurationError(f"{str(path)!r} cannot be loaded by ONNX Runtime: "
                                     f"{str(exc).splitlines()[0]}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        window = tuple(spec.inference.roi_size) if _fixed(self.session) else min(PROBE, spec.inference.roi_size)
        probe_channels(self.run(np.zeros((1, spec.in_channels, *window), dtype=np.float32)), spec, repr(str(path)))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a (batch, channels, z, y, x) float32 array."""
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])

    def _predict(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(batch.detach().cpu().numpy().astype(np.float32, copy=False)))

    def infer(self, image: sitk.Image) -> ModelOutput:
        """Class probabilities on the model's grid covering ``image`` (a vector image for several channels)."""
        expect_channels(image, self.spec)
        model_input, grid = to_model_space(image, self.spec.preprocess)
        # windows are cut and stitched on the CPU; ONNX Runtime moves each to its device
        probabilities = sliding_probabilities(self._predict, model_input, self.spec.inference, "cpu")
        return ModelOutput(grid, probabilities=restrict_to_body(probabilities, model_input, self.spec))


def _fixed(session: Any) -> bool:
    """Whether the network takes only windows of one size (an export with fixed spatial axes)."""
    return all(isinstance(d, int) for d in session.get_inputs()[0].shape[2:])
