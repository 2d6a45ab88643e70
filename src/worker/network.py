"""The model adapter: builds the network a model file describes, loads its weights, runs inference.

The only module that touches torch and MONAI at run time, so another architecture means another
adapter here and nothing else.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from db.errors import ConfigurationError
from worker.modelspec import ModelSpec
from worker.preprocess import probabilities_to_source, to_model_space


def build_network(spec: ModelSpec) -> torch.nn.Module:
    arch = spec.architecture
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=spec.out_channels,
        channels=arch.channels,
        strides=arch.strides,
        num_res_units=arch.num_res_units,
        norm=arch.norm,
        dropout=arch.dropout,
    )


def choose_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; naming a device that is absent is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(f"worker.device {name!r} asked for CUDA, but no CUDA device is present")
    return torch.device(name)


class Segmenter:
    """A loaded model that turns an image on any grid into labels on that same grid."""

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int | None = None) -> None:
        self.spec = spec
        self.device = choose_device(device)
        if threads:
            torch.set_num_threads(threads)
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
        self.network.to(self.device).eval()

    def probabilities(self, model_input: np.ndarray) -> np.ndarray:
        """Softmax probabilities (C, z, y, x) for a preprocessed (z, y, x) array."""
        tensor = torch.from_numpy(model_input)[None, None].to(self.device)
        inf = self.spec.inference
        with torch.inference_mode():
            logits = sliding_window_inference(
                tensor, roi_size=inf.roi_size, sw_batch_size=inf.sw_batch_size, predictor=self.network,
                overlap=inf.overlap, mode=inf.mode, padding_mode=inf.padding_mode,
            )
            assert isinstance(logits, torch.Tensor)  # one output head: a tensor, not a tuple or dict
            return torch.softmax(logits, dim=1)[0].float().cpu().numpy()

    def segment(self, image: sitk.Image) -> np.ndarray:
        """Labels (z, y, x, uint8) on the exact grid of ``image``."""
        model_input, grid = to_model_space(image, self.spec.preprocess)
        return probabilities_to_source(self.probabilities(model_input), grid, image)
