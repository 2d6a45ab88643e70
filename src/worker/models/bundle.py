"""The ``monai-bundle`` kind: a MONAI Model Zoo bundle run with its own transforms, inferer and post-processing.

The bundle's inference config is parsed with ``monai.bundle.ConfigParser`` and its ``preprocessing``,
``inferer`` and ``postprocessing`` run as ``SupervisedEvaluator`` would run them (collate, forward in eval
mode without gradients, decollate, post-transforms on the merged batch and output), without
pytorch-ignite: ``LoadImaged`` gets the in-memory image with the RAS affine MONAI's ITK reader would give
(``bundle_io``), and ``SaveImage(d)`` is dropped before anything is instantiated. ``Invertd`` stays, so the
label map normally comes back on the grid the image arrived on.

A bundle is code: MONAI evaluates its ``$`` expressions. It is read only from the configured folder.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.engines.utils import default_prepare_batch, engine_apply_transform
from monai.networks.utils import eval_mode
from monai.transforms import Compose, Decollated, LoadImaged, SaveImage, SaveImaged

from db.errors import AinodeError, ConfigurationError, RejectedInput
from worker.models.bundle_io import InMemoryLoad, grid_from_affine, same_grid
from worker.models.bundle_spec import METADATA, BundleSpec, checkpoint_in
from worker.models.runtime import ModelOutput, torch_device
from worker.models.spec import read_json

IN_MEMORY = "ainode-in-memory-image"  # the "file name" LoadImaged sees
# Arguments a newer MONAI removed that had no effect before: dropped from network_def when the installed
# class no longer takes them (SwinUNETR's img_size: deprecated in MONAI 1.3, removed in 1.5).
IGNORED_REMOVED_ARGS = {"SwinUNETR": ("img_size",)}
LOADERS, WRITERS = ("LoadImaged",), ("SaveImaged", "SaveImage")
# what MONAI imports only when a transform or network runs (the ``bundle`` extra): checked at load instead
NEEDS = {"Orientation": "nibabel", "SwinUNETR": "einops", "KeepLargestConnectedComponent": "skimage"}
# LoadImaged arguments that do not depend on the reader; any other goes to a file reader, whose effect
# (nibabel's as_closest_canonical, ...) the in-memory reader would silently not have
LOADER_ARGS = {"_target_", "keys", "reader", "dtype", "meta_keys", "meta_key_postfix", "overwriting",
               "image_only", "ensure_channel_first", "simple_keys", "prune_meta_pattern", "prune_meta_sep",
               "allow_missing_keys", "expanduser"}


def _target_name(node: Mapping[str, Any]) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def _walk(compose: Compose) -> Iterator[tuple[Compose, int, Any]]:
    for index, transform in enumerate(compose.transforms):
        if isinstance(transform, Compose):
            yield from _walk(transform)
        else:
            yield compose, index, transform


class BundleRuntime:
    """A loaded bundle; ``infer`` gives its label map and the grid it lies on."""

    def __init__(self, spec: BundleSpec, device: str = "auto", threads: int | None = None) -> None:
        self.spec = spec
        self.device = torch_device(device, threads)
        try:
            self._load()
        except AinodeError:
            raise
        except Exception as exc:  # the bundle's own code failing to build: name what failed
            raise ConfigurationError(f"bundle {spec.name!r} cannot be loaded: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _load(self) -> None:
        text = self.spec.config_file.read_text()
        for word, module in NEEDS.items():
            if word in text and importlib.util.find_spec(module) is None:
                raise ConfigurationError(f"bundle {self.spec.name!r} uses {word}, which needs {module}: "
                                         "pip install 'ainode[bundle]'")
        self.parser = self._parser()
        self.image_key = str(self.parser.get("image_key", "image"))
        self.amp = self._evaluator_amp()
        self.network = self._network()
        self.preprocessing: Compose = self.parser.get_parsed_content("preprocessing")
        self.inferer = self.parser.get_parsed_content("inferer")
        self.postprocessing: Compose = self.parser.get_parsed_content("postprocessing")
        self.loader = self._swap_loader()
        if any(isinstance(t, (SaveImaged, SaveImage)) for _, _, t in _walk(self.postprocessing)):
            raise ConfigurationError(f"bundle {self.spec.name!r}: postprocessing still writes files")

    def _parser(self) -> ConfigParser:
        parser = ConfigParser()
        parser.read_meta(read_json(self.spec.folder, METADATA, "bundle"))
        parser.read_config(str(self.spec.config_file))
        parser["bundle_root"] = str(self.spec.folder)
        parser["device"] = f"$torch.device({self.device!r})"
        if parser.get("inferer#device") is not None:  # stitch where the network runs, not on cuda:0 regardless
            parser["inferer#device"] = "@device"
        for key, value in self.spec.overrides.items():
            parser[key] = value
        self.notes = compatible_network_def(parser)
        for section in ("preprocessing", "postprocessing"):
            parser[section] = self._without_file_io(parser.get(section), section)
        return parser

    def _without_file_io(self, node: Any, where: str) -> Any:
        """The section with writers removed and the loader's reader unset, before anything is
        instantiated: a writer or a named reader needs nibabel or itk just to be built."""
        if isinstance(node, list):
            return [self._without_file_io(v, f"{where}#{i}") for i, v in enumerate(node)
                    if not (isinstance(v, dict) and _target_name(v) in WRITERS)]
        if not isinstance(node, dict):
            return node
        node = {k: self._without_file_io(v, f"{where}#{k}") for k, v in node.items()}
        if _target_name(node) in LOADERS:
            extra = sorted(set(node) - LOADER_ARGS)
            if extra:
                raise ConfigurationError(f"bundle {self.spec.name!r}: {where} passes {extra} to its file reader; "
                                         "the in-memory image cannot honour them")
            node.pop("reader", None)
        return node

    def _evaluator_amp(self) -> bool:
        evaluator = self.parser.get("evaluator", {})
        target = str(evaluator.get("_target_", ""))
        if not target.endswith("SupervisedEvaluator"):
            raise ConfigurationError(f"bundle {self.spec.name!r}: evaluator {target!r} is not SupervisedEvaluator")
        for key in ("prepare_batch", "decollate", "postprocessing_keys"):
            if key in evaluator and not (key == "decollate" and evaluator[key] is True):
                raise ConfigurationError(f"bundle {self.spec.name!r}: evaluator#{key} is set; ainode runs the "
                                         "default")
        amp = evaluator.get("amp", False)
        return bool(self.parser.get_parsed_content("evaluator#amp")) if isinstance(amp, str) else bool(amp)

    def _network(self) -> torch.nn.Module:
        path = checkpoint_in(self.parser, self.spec.folder)
        if not path.exists():
            raise ConfigurationError(f"bundle {self.spec.name!r}: weights {str(path)!r} do not exist")
        if path.suffix == ".ts":
            return torch.jit.load(str(path), map_location=self.device).eval()
        network: torch.nn.Module = self.parser.get_parsed_content("network_def")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # CheckpointLoader's {"model": state_dict} layout
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigurationError(f"bundle {self.spec.name!r}: weights {str(path)!r} do not fit its network_def: "
                                     f"{str(exc).splitlines()[0]}") from exc
        return network.to(torch.device(self.device)).eval()

    def _swap_loader(self) -> InMemoryLoad:
        found = [(c, i, t) for c, i, t in _walk(self.preprocessing) if isinstance(t, LoadImaged)]
        if len(found) != 1:
            raise ConfigurationError(f"bundle {self.spec.name!r}: preprocessing has {len(found)} LoadImaged, "
                                     "expected 1")
        compose, index, load = found[0]
        if list(load.keys) != [self.image_key]:
            raise ConfigurationError(f"bundle {self.spec.name!r}: LoadImaged loads {list(load.keys)}, expected "
                                     f"[{self.image_key!r}]")
        loader = InMemoryLoad(load)
        transforms = list(compose.transforms)
        transforms[index] = loader
        compose.transforms = tuple(transforms)
        return loader

    def predict(self, image: sitk.Image) -> dict[str, Any]:
        """The bundle's output item (``pred`` and the rest) after its own post-processing."""
        wanted = max(1, len(self.spec.channels))
        if image.GetNumberOfComponentsPerPixel() != wanted:
            raise RejectedInput(f"bundle {self.spec.name!r} takes {wanted} channel(s)"
                                + (f" ({', '.join(self.spec.channels)})" if self.spec.channels else "")
                                + f", got an image of {image.GetNumberOfComponentsPerPixel()}")
        self.loader.image = image
        try:
            item = self.preprocessing({self.image_key: IN_MEMORY})
        finally:
            self.loader.image = None
        device = torch.device(self.device)
        batch = list_data_collate([item])
        inputs, targets = default_prepare_batch(batch, device)
        autocast = torch.autocast("cuda") if self.amp and device.type == "cuda" else nullcontext()
        with eval_mode(self.network), autocast:
            pred = self.inferer(inputs, self.network)
        decollate = Decollated(keys=None, detach=True)
        batch_items, outputs = decollate(batch), decollate({"image": inputs, "label": targets, "pred": pred})
        _, output = engine_apply_transform(batch_items[0], outputs[0], self.postprocessing)
        return dict(output)

    def infer(self, image: sitk.Image) -> ModelOutput:
        """The label map on the grid ``pred``'s affine names (``image``'s own when ``Invertd`` ran)."""
        pred = self.predict(image)["pred"]
        if pred.ndim != 4 or pred.shape[0] != 1:
            raise ValueError(f"bundle {self.spec.name!r}: pred has shape {tuple(pred.shape)}, expected (1, i, j, k)")
        values = pred[0].detach().cpu().float().numpy()
        # a label map inverted with bilinear interpolation (prostate_mri_anatomy) holds fractions: rounded;
        # NaN or values that are no label are refused by runtime.segment, which checks every kind's output
        labels = np.ascontiguousarray(np.rint(values).transpose(2, 1, 0))
        i, j, k = (int(s) for s in values.shape)
        grid = grid_from_affine(np.asarray(pred.affine, dtype=np.float64), (i, j, k))
        return ModelOutput(image if same_grid(grid, image) else grid, labels=labels)


def compatible_network_def(parser: ConfigParser) -> list[str]:
    """Drop from ``network_def`` the arguments in ``IGNORED_REMOVED_ARGS`` the installed class refuses."""
    network_def = parser.get("network_def")
    if not isinstance(network_def, dict) or not isinstance(network_def.get("_target_"), str):
        return []
    target = network_def["_target_"].rsplit(".", 1)[-1]
    notes = []
    for arg in IGNORED_REMOVED_ARGS.get(target, ()):
        if arg in network_def:
            from monai.networks import nets

            cls = getattr(nets, target, None)
            if cls is not None and arg not in inspect.signature(cls).parameters:
                del network_def[arg]
                notes.append(f"network_def#{arg} dropped: {target} of this MONAI no longer takes it")
    return notes
