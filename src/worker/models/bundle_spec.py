"""What a MONAI Model Zoo bundle says about itself, read from its files without loading it.

``configs/metadata.json`` gives the name, version, modality, input channels (several: one series each,
named in ``ModelSpec.channels``) and the output's ``channel_def`` (the label names, coded by
``worker.models.labels``). Which weights file it loads is only
known by evaluating its config (``$`` expressions such as wholeBody's ``model_lowres.pt`` switch), which
needs MONAI: ``BundleSpec.weight_files`` does that when asked, not when the node decides routing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from db.errors import ConfigurationError
from worker.models.labels import coded_labels, read_labels_toml
from worker.models.spec import FolderModelSpec, read_json

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
METADATA, INFERENCE = "configs/metadata.json", "configs/inference.json"
MODALITIES = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PT", "PT": "PT"}


class BundleSpec(FolderModelSpec):
    """A bundle folder: its metadata, the configuration overrides the node applies, its label codes."""

    overrides: dict[str, Any] = {}

    @property
    def config_file(self) -> Path:
        for name in CONFIG_NAMES:
            if (self.folder / "configs" / name).exists():
                return self.folder / "configs" / name
        raise ConfigurationError(f"bundle {str(self.folder)!r} has no configs/inference.json or .yaml")

    def weight_files(self) -> list[Path]:
        """The checkpoint the bundle's own ``CheckpointLoader`` names, with the node's overrides applied."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        parser["bundle_root"] = str(self.folder)
        for key, value in self.overrides.items():
            parser[key] = value
        return [checkpoint_in(parser, self.folder)]


def _items(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _items(value, f"{path}{key}#")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _items(value, f"{path}{index}#")


def checkpoint_in(parser: Any, folder: Path) -> Path:
    """Where a parsed bundle config loads its weights from: its ``CheckpointLoader``'s ``load_path``, else
    ``models/model.pt`` (or ``models/model.ts``, a TorchScript bundle)."""
    for path, item in _items(parser.get()):
        if str(item.get("_target_", "")).endswith("CheckpointLoader") and "load_path" in item:
            return Path(parser.get_parsed_content(f"{path}load_path")).resolve()
    default, scripted = folder / "models" / "model.pt", folder / "models" / "model.ts"
    return scripted if scripted.exists() and not default.exists() else default


def label_names(name: str, channel_def: Mapping[str, str],
                entries: Mapping[str, Mapping[str, Any]] | None = None) -> dict[int, str]:
    """Segment number → name from the output ``channel_def``.

    Channel 0 the background: a label map, the channel number is the value. Otherwise the channels are
    sigmoid regions that may overlap (BraTS: tumour core, whole tumour, enhancing tumour), which the
    bundle's own postprocessing merges into one label map (1, 2, 4): only ``labels.toml`` can say which
    values make each region, so every label needs its ``values`` there; they are numbered 1..N in
    ``channel_def`` order."""
    try:
        labels = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError as exc:
        raise ConfigurationError(f"bundle {name!r}: channel_def keys must be numbers: {exc}") from exc
    if sorted(labels) != list(range(len(labels))) or len(labels) > 256:
        raise ConfigurationError(f"bundle {name!r}: output channels {sorted(labels)} must be 0..N with N ≤ 255")
    if labels.get(0, "").lower() == "background":
        return {k: v for k, v in labels.items() if k}
    entries = entries or {}
    missing = [v for _, v in sorted(labels.items()) if "values" not in entries.get(v, {})]
    if missing:
        raise ConfigurationError(f"bundle {name!r}: output channel 0 is {labels.get(0)!r}, not background: its "
                                 "outputs are regions that may overlap, merged by its postprocessing into one "
                                 "label map; labels.toml must give the label-map values of every label (e.g. "
                                 f"values = [1, 4]); missing for: {', '.join(missing)}")
    return {k + 1: v for k, v in sorted(labels.items())}


def input_channels(name: str, image: Mapping[str, Any]) -> tuple[str, ...]:
    """The input channels' names in order when there are several (one series each), else ()."""
    count = int(image.get("num_channels", 1))
    channel_def = image.get("channel_def", {})
    try:
        names = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError as exc:
        raise ConfigurationError(f"bundle {name!r}: input channel_def keys must be numbers: {exc}") from exc
    if count < 1 or ((count > 1 or names) and sorted(names) != list(range(count))):
        raise ConfigurationError(f"bundle {name!r}: input num_channels is {count} but its channel_def names "
                                 f"channels {sorted(names)}; expected 0..{count - 1}")
    return tuple(names[k] for k in range(count)) if count > 1 else ()


def _plain_spacing(folder: Path) -> tuple[float, float, float] | None:
    """The grid ``Spacingd`` resamples to, when the config states it as numbers (else None: an expression)."""
    if not (folder / INFERENCE).exists():
        return None
    raw = read_json(folder, INFERENCE, "bundle")
    for _, item in _items(raw.get("preprocessing", {})):
        if str(item.get("_target_", "")).endswith("Spacingd"):
            pixdim = item.get("pixdim")
            if isinstance(pixdim, str) and pixdim.startswith("@"):
                pixdim = raw.get(pixdim[1:])
            if isinstance(pixdim, list) and len(pixdim) == 3 and all(isinstance(v, (int, float)) for v in pixdim):
                return (float(pixdim[0]), float(pixdim[1]), float(pixdim[2]))
    return None


def describe_bundle(path: Path | None, options: Mapping[str, Any]) -> BundleSpec:
    """A bundle folder's description, checked: its input channels named, its labels' values known, every
    label coded."""
    if path is None or not Path(path).is_dir():
        raise ConfigurationError(f"bundle folder {str(path)!r} does not exist")
    folder = Path(path).resolve()
    metadata = read_json(folder, METADATA, "bundle")
    name = str(metadata.get("name") or folder.name)
    fmt = metadata.get("network_data_format", {})
    image = fmt.get("inputs", {}).get("image", {})
    channels = input_channels(name, image)
    modality = options.get("modality") or MODALITIES.get(str(image.get("modality", "")).upper())
    if modality is None:
        raise ConfigurationError(f"bundle {name!r}: input modality {image.get('modality')!r} is not CT, MR or PET; "
                                 "set modality in its [models.NAME]")
    toml = Path(options.get("labels") or folder / "labels.toml")
    names = label_names(name, fmt.get("outputs", {}).get("pred", {}).get("channel_def", {}), read_labels_toml(toml))
    labels = coded_labels(names, toml, f"bundle {name!r}")
    spec = BundleSpec(name=name[:64], version=str(metadata.get("version") or "0")[:64],
                      description=str(metadata.get("description", ""))[:500], modality=modality,
                      weights="models/model.pt", channels=channels, labels=labels,
                      overrides=dict(options.get("overrides") or {}),
                      model_spacing=_plain_spacing(folder), path=folder)
    spec.config_file  # noqa: B018 - refuses a folder without an inference config now, not at the first job
    return spec
