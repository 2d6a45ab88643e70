"""The ``torchscript`` kind: a network saved with ``torch.jit`` (``ainode export --format torchscript``), run
on ainode's own grid by sliding window exactly as the model it was exported from.

The description beside it (``model.toml`` with ``kind = "torchscript"``) gives the grid, window, sliding
window and labels; at load a probe window checks that the network gives one channel per label plus the
background, so a file that does not fit its description stops start-up instead of a job.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from db.errors import ConfigurationError
from worker.models.body import restrict_to_body
from worker.models.grid import expect_channels, to_model_space
from worker.models.runtime import ModelOutput, torch_device
from worker.models.spec import ExportedSpec
from worker.models.unet import sliding_probabilities

PROBE = (32, 32, 32)  # small enough to be cheap, a whole number of every usual UNet's strides


def probe_channels(output: np.ndarray | torch.Tensor, spec: ExportedSpec, source: str) -> None:
    """Refuse a network whose output is not (batch, labels + 1, z, y, x) for the probe window."""
    shape = tuple(output.shape)
    if len(shape) != 5 or shape[1] != spec.out_channels:
        raise ConfigurationError(f"{source} gives outputs of shape {shape} for a {PROBE} window; its description "
                                 f"{str(spec.path)!r} has {len(spec.labels)} labels, so (1, {spec.out_channels}, "
                                 "z, y, x) is expected")


class TorchScriptRuntime:
    """A TorchScript network with its description: an implementation of ``runtime.Runtime``."""

    def __init__(self, spec: ExportedSpec, device: str = "auto", threads: int | None = None) -> None:
        self.spec = spec
        self.device = torch_device(device, threads)
        path = spec.weights_path
        if not path.is_file():
            raise ConfigurationError(f"model weights {str(path)!r} do not exist")
        try:
            self.network = torch.jit.load(str(path), map_location=torch.device(self.device)).eval()
        except RuntimeError as exc:
            raise ConfigurationError(f"{str(path)!r} is not a TorchScript file: {str(exc).splitlines()[0]}") from exc
        window = min(PROBE, spec.inference.roi_size)
        probe = torch.zeros((1, spec.in_channels, *window), device=torch.device(self.device))
        with torch.inference_mode():
            probe_channels(self.network(probe), spec, repr(str(path)))

    def infer(self, image: sitk.Image) -> ModelOutput:
        """Class probabilities on the model's grid covering ``image`` (a vector image for several channels)."""
        expect_channels(image, self.spec)
        model_input, grid = to_model_space(image, self.spec.preprocess)
        probabilities = sliding_probabilities(self.network, model_input, self.spec.inference, self.device)
        return ModelOutput(grid, probabilities=restrict_to_body(probabilities, model_input, self.spec))
