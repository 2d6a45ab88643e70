"""What an nnU-Net v2 trained-model folder says about itself, read from its JSON files without nnunetv2.

The folder is what nnU-Net writes under ``nnUNet_results``: ``Dataset###_Name/Trainer__Plans__configuration/``
with ``dataset.json`` (input channels, labels), ``plans.json`` (spacing, patch, network) and
``fold_N/checkpoint_final.pth``. Labels are coded by ``worker.models.labels``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from db.errors import ConfigurationError
from worker.models.labels import coded_labels
from worker.models.spec import FolderModelSpec, read_json

# dataset.json channel names (case-insensitive) → the modality a series must have
CT_NAMES = {"ct"}
PET_NAMES = {"pet", "pt", "suv"}
MR_NAMES = {"mr", "mri", "t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "pd", "hbv"}


class NnUNetSpec(FolderModelSpec):
    """A trained-model folder and how the node runs it (folds, checkpoint, orientation, mirroring, step)."""

    folds: tuple[int | str, ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    orientation: str | None = None
    mirroring: bool = True
    tile_step_size: float = Field(0.5, gt=0.0, le=1.0)
    configuration: str | None = None  # from the folder's name; the checkpoint has the last word

    def weight_files(self) -> list[Path]:
        return [self.folder / f"fold_{fold}" / self.checkpoint for fold in self.folds]


def label_names(dataset: Mapping[str, Any], folder: Path) -> dict[int, str]:
    """Output value → label name, background and nnU-Net's ``ignore`` label left out. Region-based models
    (label values that are lists) write ``regions_class_order[j]`` for region j."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise ConfigurationError(f"nnU-Net model {str(folder)!r}: dataset.json has no labels")
    named = {k: v for k, v in labels.items() if k not in ("background", "ignore")}
    if any(isinstance(v, list) for v in named.values()):
        order = dataset.get("regions_class_order")
        if not order or len(order) != len(named):
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: region labels {list(named)} need a "
                                     f"regions_class_order of that length, got {order!r}")
        out = {int(value): name for name, value in zip(named, order)}
    else:
        out = {int(value): name for name, value in named.items()}
    if max(out, default=0) > 255 or min(out, default=1) < 1:
        raise ConfigurationError(f"nnU-Net model {str(folder)!r}: label values {sorted(out)} must lie in 1..255")
    return out


def channel_names(dataset: Mapping[str, Any], folder: Path) -> list[str]:
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise ConfigurationError(f"nnU-Net model {str(folder)!r}: dataset.json has no channel_names")
    return [str(channels[k]) for k in sorted(channels, key=int)]


def modality_of(channels: list[str], folder: Path) -> str:
    words = {c.strip().lower() for c in channels}
    for modality, names in (("CT", CT_NAMES), ("PT", PET_NAMES), ("MR", MR_NAMES)):
        if words <= names:
            return modality
    raise ConfigurationError(f"nnU-Net model {str(folder)!r}: cannot tell the modality from its channels "
                             f"{channels}; set modality in its [models.NAME]")


def configuration_of(folder: Path, plans: Mapping[str, Any]) -> str | None:
    """The configuration the folder's name ends with (``…__3d_fullres``), or the plans' only one."""
    configurations = plans.get("configurations", {})
    named = folder.name.rsplit("__", 1)[-1]
    if named in configurations:
        return named
    return next(iter(configurations)) if len(configurations) == 1 else None


def describe_nnunet(path: Path | None, options: Mapping[str, Any]) -> NnUNetSpec:
    """A trained-model folder's description: labels coded, one input channel, the folds asked for present."""
    if path is None or not Path(path).is_dir():
        raise ConfigurationError(f"nnU-Net model folder {str(path)!r} does not exist")
    folder = Path(path).resolve()
    dataset = read_json(folder, "dataset.json", "nnU-Net model")
    plans = read_json(folder, "plans.json", "nnU-Net model")
    channels = channel_names(dataset, folder)
    if len(channels) != 1:
        raise ConfigurationError(f"nnU-Net model {str(folder)!r} needs {len(channels)} input channels "
                                 f"({', '.join(channels)}), one series each; ainode gives a model one series "
                                 "(inputs made of several series are not supported yet)")
    modality = options.get("modality") or modality_of(channels, folder)
    configuration = configuration_of(folder, plans)
    spacing = None
    if configuration is not None:
        zyx = plans["configurations"][configuration].get("spacing")
        if isinstance(zyx, list) and len(zyx) == 3:
            spacing = (float(zyx[2]), float(zyx[1]), float(zyx[0]))  # plans (z, y, x); ainode (x, y, z)
    name = str(plans.get("dataset_name") or folder.parent.name)
    labels = coded_labels(label_names(dataset, folder), Path(options.get("labels") or folder / "labels.toml"),
                          f"nnU-Net model {name!r}")
    keys = ("folds", "checkpoint", "orientation", "mirroring", "tile_step_size")
    spec = NnUNetSpec(name=name[:64], version=folder.name[:64], description=str(dataset.get("description", ""))[:500],
                      modality=modality, weights="", channels=tuple(channels), labels=labels, path=folder,
                      configuration=configuration, model_spacing=spacing,
                      **{k: tuple(options[k]) if k == "folds" else options[k] for k in keys if k in options})
    for file in spec.weight_files():
        if not file.is_file():
            raise ConfigurationError(f"nnU-Net model {str(folder)!r}: {file.relative_to(folder)} is missing")
    return spec
