"""MONAI Model Zoo bundles for tests: the shared configs copied into a tmp folder with weights of their
declared architecture made there (seeded, output bias centred so many labels appear), and phantom images.

The shared bundles hold configs only (no weights); nothing is downloaded and nothing is copied into the repo.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from training.phantom import make_case
from worker.models.bundle_spec import describe_bundle

ZOO = Path(__file__).resolve().parents[2] / "shared" / "models" / "monai-model-zoo"
LABELS = Path(__file__).resolve().parents[1] / "config" / "labels"
LOWRES = {"displayable_configs#highres": False}


def copy_bundle(name: str, dest: Path) -> Path:
    """A writable copy of a shared bundle folder (configs, docs, licence; no weights)."""
    shutil.copytree(ZOO / name, dest, dirs_exist_ok=True, copy_function=shutil.copyfile)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (dest / "models").mkdir(exist_ok=True)
    if (LABELS / f"{name}.labels.toml").exists():
        shutil.copyfile(LABELS / f"{name}.labels.toml", dest / "labels.toml")
    return dest


def make_bundle(name: str, dest: Path, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """``copy_bundle`` plus weights of its ``network_def`` from ``seed``, the output bias centred on a phantom."""
    from worker.models.bundle import BundleRuntime, compatible_network_def

    overrides = overrides or {}
    copy_bundle(name, dest)
    spec = describe_bundle(dest, {"overrides": overrides})
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(spec.config_file))
    compatible_network_def(parser)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    (weights,) = spec.weight_files()
    torch.save(network.state_dict(), weights)
    runtime = BundleRuntime(spec, device="cpu")
    _centre_output_bias(runtime, seed)
    torch.save(runtime.network.state_dict(), weights)
    return dest


def _centre_output_bias(runtime: Any, seed: int) -> None:
    """Shift the last output bias so every channel's mean logit on a phantom patch is equal: random weights
    then give a patchwork of many labels instead of one, at no training cost."""
    image = phantom(seed + 100, crop_mm=150)
    if runtime.spec.channels:  # a bundle of several series: the phantom in each channel
        image = sitk.Compose([sitk.Cast(image, sitk.sitkFloat32)] * len(runtime.spec.channels))
    runtime.loader.image = image
    item = runtime.preprocessing({runtime.image_key: "phantom"})
    runtime.loader.image = None
    x = item[runtime.image_key].as_tensor().float()
    size = [min(96, max(32, s // 32 * 32)) for s in x.shape[1:]]
    pad = [max(0, n - s) for n, s in zip(size, x.shape[1:])]
    x = torch.nn.functional.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
    xb = x[:, : size[0], : size[1], : size[2]][None]
    with torch.no_grad():
        logits = runtime.network(xb)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        channels = logits.shape[1]
        biases = [p for n, p in runtime.network.named_parameters() if n.endswith("bias") and p.shape == (channels,)]
        biases[-1] -= logits.mean(dim=(0, 2, 3, 4))


def phantom(seed: int, crop_mm: float | None = None, **grid: object) -> sitk.Image:
    """A phantom CT (float32 HU) as a SimpleITK image; ``crop_mm`` keeps a centred box that size."""
    case = make_case(seed, **grid)  # type: ignore[arg-type]
    image = sitk.GetImageFromArray(case.hu.astype(np.float32))
    image.SetSpacing(tuple(float(v) for v in case.grid.spacing))
    image.SetOrigin(tuple(float(v) for v in case.grid.origin))
    image.SetDirection(tuple(float(v) for v in np.asarray(case.grid.direction).reshape(-1)))
    if crop_mm:
        size = np.array(image.GetSize())
        keep = np.minimum(size, np.ceil(crop_mm / np.array(image.GetSpacing()))).astype(int)
        image = sitk.RegionOfInterest(image, [int(v) for v in keep], [int(v) for v in (size - keep) // 2])
    return image
