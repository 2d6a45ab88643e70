"""Cases in NIfTI folders, the nnU-Net / Medical Segmentation Decathlon layout: ``imagesTr/<case>.nii.gz``
(or ``<case>_0000.nii.gz``, nnU-Net's first channel) beside ``labelsTr/<case>.nii.gz``. A model of several
channels reads ``<case>_0000``, ``<case>_0001``, ... in the order ``dataset.json``'s ``channel_names``
gives them beside ``imagesTr``, matched to the model's ``channels`` by name.

Every case is checked before any training starts, so an hour of training is never spent on data that was
wrong from the beginning: a missing partner, image and label grids that differ, label values the model
file does not declare, an empty folder, a file that is not an image are refused with the case named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from worker.models.spec import UNetSpec

SUFFIXES = (".nii.gz", ".nii")
CHANNEL = "_0000"  # nnU-Net names the first (here: only) channel of a case so
SPACING_TOLERANCE = 1e-3  # relative
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4


class DatasetError(ValueError):
    """Training or evaluation data that cannot be used as it is; the message names the case and the problem."""


@dataclass(frozen=True)
class CasePair:
    """One case: its name, its image file and its label file."""

    name: str
    image: Path  # the first channel
    label: Path
    more: tuple[Path, ...] = ()  # the model's further channels, in its order

    @property
    def images(self) -> tuple[Path, ...]:
        return (self.image, *self.more)


def _case_name(path: Path) -> str | None:
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _cases_in(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"the {what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = _case_name(path)
        if name is None or path.name.startswith("."):
            continue
        if what == "images":
            name = name.removesuffix(CHANNEL)
        if name in found:
            raise DatasetError(f"case {name}: two {what} files ({found[name].name} and {path.name})")
        found[name] = path
    if not found:
        raise DatasetError(f"the {what} folder {folder} holds no NIfTI file (.nii.gz or .nii)")
    return found


def dataset_channels(images: Path) -> tuple[str, ...] | None:
    """The channel names of ``dataset.json`` beside ``images`` (in file order _0000, _0001, ...), if it has any."""
    path = images.parent / "dataset.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        names = data.get("channel_names") or data.get("modality")  # nnU-Net v2, and the Decathlon's name
    except (json.JSONDecodeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a JSON object: {exc}") from exc
    if not names:
        return None
    return tuple(str(names[k]) for k in sorted(names, key=int))


def channel_order(images: Path, spec: UNetSpec) -> list[int]:
    """The file index (_000K) of each of the model's channels."""
    named = dataset_channels(images)
    if not spec.channels:
        if named and len(named) > 1:
            raise DatasetError(f"model {spec.name} takes one channel, but {images.parent / 'dataset.json'} names "
                               f"{len(named)} ({', '.join(named)}): declare channels = {list(named)} in its model file")
        return [0]
    if named is None:
        return list(range(len(spec.channels)))
    missing = [c for c in spec.channels if c not in named]
    if missing:
        raise DatasetError(f"model {spec.name} takes channels {', '.join(spec.channels)}, but "
                           f"{images.parent / 'dataset.json'} names {', '.join(named)} (no {', '.join(missing)})")
    return [named.index(c) for c in spec.channels]


def _channel_cases(folder: Path, order: list[int], spec: UNetSpec) -> dict[str, tuple[Path, ...]]:
    if not folder.is_dir():
        raise DatasetError(f"the images folder {folder} does not exist")
    files: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        name = _case_name(path)
        match = re.fullmatch(r"(.+)_(\d{4})", name or "")
        if match and not path.name.startswith("."):
            files.setdefault(match[1], {})[int(match[2])] = path
    if not files:
        raise DatasetError(f"the images folder {folder} holds no channel file (<case>_0000.nii.gz)")
    cases = {}
    for case, found in files.items():
        for channel, k in zip(spec.channels, order):
            if k not in found:
                raise DatasetError(f"case {case}: no {channel} channel file {case}_{k:04d}.nii.gz in {folder}")
        cases[case] = tuple(found[k] for k in order)
    return cases


def pair_cases(images: Path, labels: Path, spec: UNetSpec | None = None) -> list[CasePair]:
    """Image and label files matched by case name; a case missing either, or one of the model's channels,
    is refused."""
    order = channel_order(images, spec) if spec is not None else [0]
    if spec is not None and spec.channels:
        channels = _channel_cases(images, order, spec)
        image_files = {name: files[0] for name, files in channels.items()}
    else:
        channels, image_files = {}, _cases_in(images, "images")
    label_files = _cases_in(labels, "labels")
    unlabelled = sorted(set(image_files) - set(label_files))
    if unlabelled:
        raise DatasetError(f"case {unlabelled[0]}: image {image_files[unlabelled[0]].name} has no label in {labels}"
                           + (f" (and {len(unlabelled) - 1} more cases)" if len(unlabelled) > 1 else ""))
    orphans = sorted(set(label_files) - set(image_files))
    if orphans:
        raise DatasetError(f"case {orphans[0]}: label {label_files[orphans[0]].name} has no image in {images}"
                           + (f" (and {len(orphans) - 1} more cases)" if len(orphans) > 1 else ""))
    return [CasePair(name, image_files[name], label_files[name], channels[name][1:] if name in channels else ())
            for name in sorted(image_files)]


def _information(path: Path, case: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DatasetError(f"case {case}: {path} cannot be read as an image: {str(exc).strip().splitlines()[-1]}")
    return reader


def _describe(reader: sitk.ImageFileReader) -> str:
    size = "x".join(str(v) for v in reader.GetSize())
    spacing = "x".join(f"{v:.4g}" for v in reader.GetSpacing())
    origin = ", ".join(f"{v:.2f}" for v in reader.GetOrigin())
    return f"{size} at {spacing} mm, origin ({origin})"


def _check_grids(pair: CasePair) -> None:
    for path in pair.images:
        _check_grid(pair, path)


def _check_grid(pair: CasePair, path: Path) -> None:
    image, label = _information(path, pair.name), _information(pair.label, pair.name)
    if image.GetDimension() != 3 or image.GetNumberOfComponents() != 1:
        raise DatasetError(f"case {pair.name}: image {path.name} is not one 3D volume "
                           f"({image.GetDimension()}D, {image.GetNumberOfComponents()} components)")
    same = (image.GetSize() == label.GetSize()
            and np.allclose(image.GetSpacing(), label.GetSpacing(), rtol=SPACING_TOLERANCE, atol=0)
            and np.allclose(image.GetOrigin(), label.GetOrigin(), rtol=0, atol=ORIGIN_TOLERANCE_MM)
            and np.allclose(image.GetDirection(), label.GetDirection(), rtol=0, atol=DIRECTION_TOLERANCE))
    if not same:
        raise DatasetError(f"case {pair.name}: the image grid ({_describe(image)}) and the label grid "
                           f"({_describe(label)}) differ")


def read_label(pair: CasePair, spec: UNetSpec) -> sitk.Image:
    """The label image, refused when it holds values the model file does not declare."""
    label = sitk.ReadImage(str(pair.label))
    values = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(values == np.round(values)):
            raise DatasetError(f"case {pair.name}: label {pair.label.name} holds non-integer values "
                               f"(type {label.GetPixelIDTypeAsString()})")
    present = {int(v) for v in np.unique(values)}
    declared = {0, *(label.value for label in spec.labels)}
    if present - declared:
        raise DatasetError(f"case {pair.name}: label values {sorted(present - declared)} in {pair.label.name} are "
                           f"not declared by model {spec.name} (declared: {sorted(declared)})")
    return sitk.Cast(label, sitk.sitkUInt8)


def check_cases(images: Path, labels: Path, spec: UNetSpec) -> list[CasePair]:
    """Every case paired, its grids equal and its label values declared; raises ``DatasetError`` naming the
    first case that is not."""
    pairs = pair_cases(images, labels, spec)
    for pair in pairs:
        _check_grids(pair)
        read_label(pair, spec)
    return pairs


def read_case(pair: CasePair, spec: UNetSpec) -> tuple[sitk.Image, sitk.Image]:
    """Image (as float32, its values in the modality's units; a vector image of the model's channels when
    it has several) and label of a checked case."""
    image = sitk.ReadImage(str(pair.image), sitk.sitkFloat32)
    if pair.more:
        others = [sitk.ReadImage(str(path), sitk.sitkFloat32) for path in pair.more]
        for other in others:
            other.CopyInformation(image)  # equal within the tolerances checked
        image = sitk.Compose(image, *others)
    return image, read_label(pair, spec)
