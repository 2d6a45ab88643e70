"""The model description file (``model.toml``): what a model expects and what its labels mean.

Validated once when it is loaded, so a typo in a user's model file stops start-up with the key named,
instead of producing a SEG with wrong codes later.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from db.errors import ConfigurationError

DEMO_MODEL = Path(__file__).parent / "demo" / "model.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept, e.g. SNOMED CT ``39607008`` "Lung"."""

    scheme: str = "SCT"
    value: str
    meaning: str


class LabelSpec(_Strict):
    value: int = Field(ge=1, le=255, description="Label value in the model output; the SEG's segment number order")
    values: tuple[int, ...] | None = None  # the label-map values the segment is made of (None: just ``value``)
    name: str = Field(min_length=1, max_length=64)
    category: Code
    type: Code
    anatomic_region: Code | None = None
    modifier: Code | None = None  # of the type, e.g. laterality (SNOMED CT "Left")
    color: tuple[int, int, int] = (255, 0, 0)
    keep_largest: int = Field(0, ge=0, description="Keep this many largest components; 0 keeps all")
    fill_holes: bool = False
    min_volume_ml: float = Field(0.0, ge=0.0)
    inside_body: bool = False  # CT: dropped outside the patient's body (worker.models.body)

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"colour {v} must be three values in 0..255")
        return v

    @field_validator("values")
    @classmethod
    def _values(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or len(set(v)) != len(v) or any(not 1 <= x <= 255 for x in v)):
            raise ValueError(f"values {list(v)} must be distinct label-map values in 1..255")
        return v

    @model_validator(mode="after")
    def _one_value_to_clean(self) -> "LabelSpec":
        """Clean-up works on one value of the label map; a segment of several (an overlapping region such
        as BraTS's whole tumour) would change the other segments that share its values."""
        if len(self.mask_values) > 1 and (self.keep_largest or self.fill_holes or self.min_volume_ml):
            raise ValueError(f"label {self.name!r} is made of values {list(self.mask_values)}: keep_largest, "
                             "fill_holes and min_volume_ml clean a label of one value only")
        return self

    @property
    def mask_values(self) -> tuple[int, ...]:
        """The label-map values whose voxels make this segment."""
        return self.values if self.values is not None else (self.value,)


class ArchitectureSpec(_Strict):
    """Arguments of MONAI's ``UNet``."""

    name: Literal["UNet"] = "UNet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "INSTANCE"
    dropout: float = 0.0

    @model_validator(mode="after")
    def _lengths(self) -> "ArchitectureSpec":
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides {self.strides} must have one entry fewer than channels {self.channels}"
            )
        return self


class PreprocessSpec(_Strict):
    orientation: str = Field("LPS", pattern=r"^[LR][PA][SI]$|^[LR][SI][PA]$|^[PA][LR][SI]$")
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.5)
    window: tuple[float, float] = (-1000.0, 400.0)
    # "window": clip to ``window`` and scale to [0, 1] (CT, HU); "zscore": each channel minus its mean over
    # its voxels > 0, divided by their standard deviation, the rest 0 (MR: MONAI NormalizeIntensityd with
    # nonzero and channel_wise)
    normalize: Literal["window", "zscore"] = "window"

    @model_validator(mode="after")
    def _window(self) -> "PreprocessSpec":
        if self.window[0] >= self.window[1]:
            raise ValueError(f"window {self.window} must be (lower, upper) with lower < upper")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing {self.spacing} must be positive")
        return self


class InferenceSpec(_Strict):
    roi_size: tuple[int, int, int] = (96, 96, 96)
    sw_batch_size: int = Field(1, ge=1)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    mode: Literal["gaussian", "constant"] = "gaussian"
    padding_mode: Literal["replicate", "reflect", "constant"] = "replicate"


class ModelSpec(_Strict):
    """What every kind of model says about itself: what it takes, what its labels mean, which weights.
    Each runtime kind fills it from its own files (``model.toml``, a bundle's metadata, ``dataset.json``)."""

    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    modality: Literal["CT", "MR", "PT"] = "CT"
    min_slices: int = Field(16, ge=1)
    weights: str = "weights.pt"
    channels: tuple[str, ...] = ()  # names of the input channels when there are several
    labels: tuple[LabelSpec, ...]
    path: Path = Field(Path("."), exclude=True)

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """The grid (mm) the model resamples to, when it has one of its own."""
        return None

    @model_validator(mode="after")
    def _labels(self) -> "ModelSpec":
        values = [label.value for label in self.labels]
        if not values:
            raise ValueError("a model needs at least one label")
        if len(set(values)) != len(values):
            raise ValueError(f"label values {values} must each appear once")
        return self

    @property
    def weights_path(self) -> Path:
        return (self.path.parent / self.weights).resolve()

    def weight_files(self) -> list[Path]:
        """The files that hold the weights (a kind with several, e.g. nnU-Net folds, lists them all)."""
        return [self.weights_path]

    def weights_digest(self) -> str:
        """SHA-256 of the weights: identifies exactly which model made a result."""
        digest = hashlib.sha256()
        for path in self.weight_files():
            try:
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            except FileNotFoundError as exc:
                raise ConfigurationError(f"model {self.name}: weights {str(path)!r} do not exist") from exc
        return digest.hexdigest()


class FolderModelSpec(ModelSpec):
    """A model that is a folder run by its own framework (a MONAI bundle, an nnU-Net model), which resamples
    by itself: the spacing it works at is read from the folder, for ``ainode models`` only."""

    model_spacing: tuple[float, float, float] | None = Field(None, exclude=True)

    @property
    def folder(self) -> Path:
        return self.path

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        return self.model_spacing


def read_json(folder: Path, name: str, kind: str) -> dict[str, Any]:
    """A JSON object from a model folder (``kind`` "bundle", "nnU-Net model"): a file missing or broken
    stops start-up with the folder and the file named."""
    where = f"{kind} {str(folder)!r}: {name}"
    try:
        data = json.loads((folder / name).read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{where} is missing") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    return data


class GridModelSpec(ModelSpec):
    """A network ainode runs itself: resampled to its grid, windowed, sliding window, labels 1..N."""

    preprocess: PreprocessSpec = PreprocessSpec()
    inference: InferenceSpec = InferenceSpec()

    @model_validator(mode="after")
    def _consecutive(self) -> "GridModelSpec":
        values = sorted(label.value for label in self.labels)
        if values != list(range(1, len(values) + 1)):
            raise ValueError(f"label values {values} must be 1..{len(values)}, each once")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels {list(self.channels)} must each be named once")
        return self

    @property
    def in_channels(self) -> int:
        """Channels of the network's input: one per named channel, one when none is named."""
        return max(1, len(self.channels))

    @property
    def out_channels(self) -> int:
        return len(self.labels) + 1

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        return self.preprocess.spacing


class UNetSpec(GridModelSpec):
    """The ``ainode`` kind's ``model.toml``: a MONAI ``UNet``, its preprocessing and sliding window."""

    architecture: ArchitectureSpec = ArchitectureSpec()


class ExportedSpec(GridModelSpec):
    """A ``torchscript`` or ``onnx`` model, as ``ainode export`` writes it: the network in one file and,
    beside it, this description (the grid, window, sliding window and labels of the model it came from)."""

    kind: Literal["torchscript", "onnx"]
    exported_from: dict[str, str] = {}  # kind, name, version and weights digest of the source model
    providers: tuple[str, ...] = ()  # onnx: ONNX Runtime execution providers, in order ([models.NAME] providers)


_Spec = TypeVar("_Spec", bound=ModelSpec)


def _read(path: Path, cls: type[_Spec]) -> _Spec:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"model file {str(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"model file {str(path)!r} is not valid TOML: {exc}") from exc
    try:
        return cls.model_validate({**raw, "path": path.resolve()})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"model file {str(path)!r}: {key}: {first['msg']}") from exc


def load_spec(path: Path | str | None = None) -> UNetSpec:
    """Read and validate a model file; the bundled demo model when no path is given."""
    return _read(Path(path) if path else DEMO_MODEL, UNetSpec)


def describe_ainode(path: Path | None, options: Mapping[str, Any]) -> UNetSpec:
    """The ``ainode`` kind in the registry: its ``model.toml`` (no options)."""
    return load_spec(path)


def load_exported_spec(path: Path, kind: str) -> ExportedSpec:
    spec = _read(Path(path), ExportedSpec)
    if spec.kind != kind:
        raise ConfigurationError(f"model file {str(path)!r} describes a {spec.kind} model, not {kind}")
    return spec


def describe_torchscript(path: Path | None, options: Mapping[str, Any]) -> ExportedSpec:
    return load_exported_spec(_required(path, "torchscript"), "torchscript")


def describe_onnx(path: Path | None, options: Mapping[str, Any]) -> ExportedSpec:
    spec = load_exported_spec(_required(path, "onnx"), "onnx")
    return spec.model_copy(update={"providers": tuple(options["providers"])}) if options.get("providers") else spec


def _required(path: Path | None, kind: str) -> Path:
    if path is None:
        raise ConfigurationError(f"a {kind} model needs the path of its description (model.toml)")
    return path
