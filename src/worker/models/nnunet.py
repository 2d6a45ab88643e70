"""The ``nnunet-v2`` kind: an nnU-Net v2 trained-model folder run through nnU-Net's own predictor.

nnU-Net decides the preprocessing (resampling to the plans' spacing, intensity normalisation), the sliding
window and the resampling back; this module only hands it the volume the way nnU-Net's own image readers
would have (array z, y, x with the spacing reversed to z, y, x) and takes the labels back on the source
grid. nnunetv2 is an optional extra (``ainode[nnunet]``), imported only when a runtime is built.

A checkpoint is a pickle (nnU-Net loads it with ``torch.load(weights_only=False)``): loading one runs code,
so folders are only ever read from the configured path, never fetched.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from db.errors import ConfigurationError, RejectedInput
from worker.models.nnunet_spec import NnUNetSpec
from worker.models.runtime import ModelOutput, torch_device
from worker.models.spec import read_json

# plans.json image_reader_writer values, and the orientation each puts a volume in before nnU-Net sees it
# (None: the array as stored). The *WithReorient readers use RAS: i→Right, j→Anterior, k→Superior,
# which is nibabel's closest canonical and ITK's "RAS" in DICOMOrient.
READERS: dict[str, str | None] = {"SimpleITKIO": None, "NibabelIO": None,
                                  "SimpleITKIOWithReorient": "RAS", "NibabelIOWithReorient": "RAS"}


def find_trainer_class(name: str) -> Any:
    """The trainer class a checkpoint names, imported from the one nnunetv2 module that defines it.

    nnunetv2's own lookup imports every trainer module in turn; its Primus trainers import timm and so
    torchvision, which does not load beside a CPU-only torch, so every trainer but the first would fail.
    Trainers that nnunetv2 does not ship (TotalSegmentator's own, say) build their network as
    ``nnUNetTrainer`` does unless they say otherwise; they fall back to it, and strict loading of the
    weights then shows whether the network fits.
    """
    import nnunetv2

    root = Path(nnunetv2.__path__[0])
    pattern = re.compile(rf"^class\s+{re.escape(name)}\s*\(", re.MULTILINE)
    for source in sorted((root / "training" / "nnUNetTrainer").rglob("*.py")):
        if pattern.search(source.read_text(errors="replace")):
            module = ".".join(("nnunetv2", *source.relative_to(root).with_suffix("").parts))
            try:
                return getattr(importlib.import_module(module), name)
            except Exception as exc:  # an import failing for a reason of its own: name it
                raise ConfigurationError(f"nnU-Net trainer {name!r} (in {module}) cannot be imported: "
                                         f"{type(exc).__name__}: {exc}") from exc
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer


class NnUNetRuntime:
    """A loaded nnU-Net v2 model: an image on any grid in, labels on that same grid out."""

    def __init__(self, spec: NnUNetSpec, device: str = "auto", threads: int | None = None) -> None:
        try:
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        except ImportError as exc:
            raise ConfigurationError(f"nnU-Net model {str(spec.folder)!r} needs nnunetv2: pip install "
                                     f"'ainode[nnunet]' ({exc})") from exc
        self.spec = spec
        self.device = torch_device(device, threads)
        folder = spec.folder
        self.dataset = read_json(folder, "dataset.json", "nnU-Net model")
        self.plans = read_json(folder, "plans.json", "nnU-Net model")
        loaded = []
        for path in spec.weight_files():
            try:
                loaded.append(torch.load(path, map_location="cpu", weights_only=False))
            except FileNotFoundError as exc:
                raise ConfigurationError(f"nnU-Net model {str(folder)!r}: {path.relative_to(folder)} is missing") \
                    from exc
            except Exception as exc:
                raise ConfigurationError(f"nnU-Net model {str(folder)!r}: {path.relative_to(folder)} cannot be "
                                         f"read: {type(exc).__name__}: {exc}") from exc
        first = loaded[0]
        try:
            self.trainer_name: str = first["trainer_name"]
            self.configuration: str = first["init_args"]["configuration"]
            parameters = [c["network_weights"] for c in loaded]
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: {spec.checkpoint} lacks {exc} "
                                     "(not an nnU-Net v2 checkpoint?)") from exc
        mirroring = first.get("inference_allowed_mirroring_axes")

        plans_manager = PlansManager(self.plans)
        if self.configuration not in plans_manager.available_configurations:
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: checkpoint configuration "
                                     f"{self.configuration!r} is not in plans.json "
                                     f"({plans_manager.available_configurations})")
        configuration_manager = plans_manager.get_configuration(self.configuration)
        if configuration_manager.previous_stage_name is not None:
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: configuration {self.configuration!r} "
                                     f"is a cascade stage (needs {configuration_manager.previous_stage_name!r} "
                                     "first); cascades are not supported")
        reader = self.plans.get("image_reader_writer", "SimpleITKIO")
        if reader not in READERS:
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: image_reader_writer {reader!r} is "
                                     f"not one of {sorted(READERS)}")
        self.orientation = spec.orientation or READERS[reader]
        self.channels = list(spec.channels)

        label_manager = plans_manager.get_label_manager(self.dataset)
        trainer_class = find_trainer_class(self.trainer_name)
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, self.dataset),
            label_manager.num_segmentation_heads, enable_deep_supervision=False)
        for path, weights in zip(spec.weight_files(), parameters):
            try:
                network.load_state_dict(weights)
            except RuntimeError as exc:
                built_by = trainer_class.__name__ if trainer_class.__name__ == self.trainer_name else \
                    f"{trainer_class.__name__} (the checkpoint's {self.trainer_name} is not in nnunetv2)"
                raise ConfigurationError(
                    f"nnU-Net model {str(folder)!r}: weights {path.relative_to(folder)} do not fit the network "
                    f"that {built_by} builds from plans.json: {str(exc).splitlines()[0]}") from exc

        target = torch.device(self.device)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice on every CPU device
            self.predictor = nnUNetPredictor(
                tile_step_size=spec.tile_step_size, use_gaussian=True, use_mirroring=spec.mirroring,
                perform_everything_on_device=target.type == "cuda", device=target,
                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.manual_initialization(network, plans_manager, configuration_manager, parameters,
                                             self.dataset, self.trainer_name, mirroring)
        self.network = network.to(target)

    def infer(self, image: sitk.Image) -> ModelOutput:
        """Labels on the grid of ``image`` itself.

        nnU-Net resamples its prediction back to the shape it was given, so the labels lie on the very
        grid handed over; with a reorienting reader that grid is ``image`` flipped or permuted, and the
        labels are permuted back (lossless).
        """
        if image.GetNumberOfComponentsPerPixel() != len(self.channels) or image.GetDimension() != 3:
            raise RejectedInput(f"nnU-Net model {self.spec.name} takes a 3D image with {len(self.channels)} "
                                f"channel(s) {self.channels}; got {image.GetDimension()}D with "
                                f"{image.GetNumberOfComponentsPerPixel()}")
        source_code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        work = sitk.DICOMOrient(image, self.orientation) if self.orientation else image
        array = sitk.GetArrayFromImage(work).astype(np.float32, copy=False)
        array = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)  # (c, z, y, x)
        properties = {
            "spacing": [abs(float(s)) for s in reversed(work.GetSpacing())],  # as SimpleITKIO: (z, y, x)
            "sitk_stuff": {"spacing": work.GetSpacing(), "origin": work.GetOrigin(),
                           "direction": work.GetDirection()},
        }
        labels = np.asarray(self.predictor.predict_single_npy_array(np.ascontiguousarray(array), properties))
        if labels.shape != array.shape[1:] or not self.orientation:
            return ModelOutput(image, labels=labels)  # a wrong shape is refused by runtime.segment
        on_work = sitk.GetImageFromArray(labels.astype(np.uint8, copy=False))
        on_work.CopyInformation(work)
        back = sitk.DICOMOrient(on_work, source_code)
        if back.GetSize() != image.GetSize() or not np.allclose(back.GetDirection(), image.GetDirection()) \
                or not np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3):
            raise RuntimeError(f"reorienting {source_code} → {self.orientation} → back did not give the source grid")
        return ModelOutput(image, labels=sitk.GetArrayFromImage(back))
