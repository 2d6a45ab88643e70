"""The ``ainode`` kind of model: a MONAI ``UNet`` a ``model.toml`` describes, run by sliding window.

The network is built from the model file, its weights loaded and checked against it, and inference runs
on the model's own grid (``worker.models.grid``); the probabilities go back through ``runtime.to_source``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from db.errors import ConfigurationError
from worker.models.body import restrict_to_body
from worker.models.grid import expect_channels, to_model_space
from worker.models.runtime import ModelOutput, torch_device
from worker.models.spec import InferenceSpec, UNetSpec


def build_network(spec: UNetSpec) -> torch.nn.Module:
    arch = spec.architecture
    return UNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=arch.channels,
        strides=arch.strides,
        num_res_units=arch.num_res_units,
        norm=arch.norm,
        dropout=arch.dropout,
    )


def sliding_probabilities(predictor: Callable[[torch.Tensor], torch.Tensor], model_input: np.ndarray,
                          inference: InferenceSpec, device: str) -> np.ndarray:
    """Softmax probabilities (C, z, y, x) of a network over a preprocessed (z, y, x) array, or a
    (channels, z, y, x) one, window by window as the model file says; shared by every kind that runs a
    network on ainode's own grid."""
    tensor = torch.from_numpy(model_input)
    tensor = (tensor[None, None] if tensor.ndim == 3 else tensor[None]).to(torch.device(device))
    with torch.inference_mode():
        logits = sliding_window_inference(
            tensor, roi_size=inference.roi_size, sw_batch_size=inference.sw_batch_size, predictor=predictor,
            overlap=inference.overlap, mode=inference.mode, padding_mode=inference.padding_mode,
        )
        assert isinstance(logits, torch.Tensor)  # one output head: a tensor, not a tuple or dict
        return torch.softmax(logits, dim=1)[0].float().cpu().numpy()


class UNetRuntime:
    """A loaded ``UNet`` with its model file: the first implementation of ``runtime.Runtime``."""

    def __init__(self, spec: UNetSpec, device: str = "auto", threads: int | None = None) -> None:
        self.spec = spec
        self.device = torch_device(device, threads)
        self.network = build_network(spec)
        try:
            state = torch.load(spec.weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise ConfigurationError(f"model weights {str(spec.weights_path)!r} do not exist") from exc
        try:
            self.network.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"model weights {str(spec.weights_path)!r} do not fit the architecture in "
                f"{str(spec.path)!r}: {str(exc).splitlines()[0]}"
            ) from exc
        self.network.to(torch.device(self.device)).eval()

    def probabilities(self, model_input: np.ndarray) -> np.ndarray:
        """Softmax probabilities (C, z, y, x) for a preprocessed (z, y, x) or (channels, z, y, x) array."""
        return sliding_probabilities(self.network, model_input, self.spec.inference, self.device)

    def infer(self, image: sitk.Image) -> ModelOutput:
        """Class probabilities on the model's grid covering ``image`` (a vector image for several channels)."""
        expect_channels(image, self.spec)
        model_input, grid = to_model_space(image, self.spec.preprocess)
        probabilities = restrict_to_body(self.probabilities(model_input), model_input, self.spec)
        return ModelOutput(grid, probabilities=probabilities)
