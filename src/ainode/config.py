"""Settings: one TOML file plus ``AINODE_`` environment overrides, validated once at start-up.

A bad key or value stops start-up with the key and the reason. The validated settings are turned into
each stage's own typed configuration here, at the boundary, and passed in; nothing reads a global.
Environment overrides use ``__`` between levels: ``AINODE_NODE__PORT=11113``,
``AINODE_DESTINATIONS__PACS__HOST=10.0.0.5``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from db.errors import ConfigurationError
from db.outbox import DeliveryPolicy
from db.queue import QueuePolicy
from pacs_node.connection import GuardConfig
from pacs_node.dispatch import Destination
from pacs_node.scp import ReceiverConfig
from worker.models.registry import Kind, ModelEntry
from worker.results.identity import OutputSettings

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire without backslash


def _ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"AE title {value!r} must be 1 to 16 printable characters, no backslash")
    return value.strip()


DEFAULT_DESTINATION = {"host": "127.0.0.1", "port": 11113, "ae_title": "PACS"}

AETitle = Annotated[str, AfterValidator(_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSection(_Section):
    ae_title: AETitle = "AINODE"
    port: int = Field(11112, ge=1, le=65535)
    bind_address: str = "127.0.0.1"
    allowed_calling_ae_titles: list[AETitle] = ["STORESCU", "ORTHANC", "AINODE-DEMO"]
    maximum_pdu_size: int = Field(131072, ge=4096, le=4194304)
    network_timeout_seconds: float = Field(60.0, gt=0)
    maximum_associations: int = Field(64, ge=1, le=1024)
    maximum_negotiating: int = Field(64, ge=1, le=1024)
    negotiation_timeout_seconds: float = Field(5.0, gt=0, le=120)
    maximum_dataset_bytes: int = Field(1 << 30, ge=1 << 20)
    maximum_inflated_bytes: int = Field(128 << 20, ge=1 << 20)
    maximum_inflight_bytes: int = Field(2 << 30, ge=1 << 20)
    database_wait_seconds: float = Field(0.8, gt=0, le=600)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one calling AE title: unknown callers are always refused")
        return value


class StorageSection(_Section):
    root: Path = Path("ainode-data")


class DatabaseSection(_Section):
    url: str = ""
    busy_timeout_seconds: float = Field(30.0, gt=0, le=600)


class QueueSection(_Section):
    settle_seconds: float = Field(5.0, ge=0)
    incomplete_settle_seconds: float = Field(600.0, ge=0)
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_seconds: float = Field(10.0, ge=0)
    backoff_max_seconds: float = Field(600.0, ge=0)


def _device(value: str) -> str:
    if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
        raise ValueError(f"device {value!r} must be auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device)]


class WorkerSection(_Section):
    device: Device = "auto"  # for every model that names none
    count: int = Field(1, ge=0, le=64)
    threads: int | None = Field(None, ge=1)
    poll_seconds: float = Field(0.5, gt=0)
    interpolate_missing_slices: int = Field(0, ge=0, le=3)


# the keys of [models.NAME] that only some kinds take
KIND_OPTIONS: dict[str, frozenset[str]] = {
    "ainode": frozenset(),
    "monai-bundle": frozenset({"overrides", "labels", "modality"}),
    "nnunet-v2": frozenset({"folds", "checkpoint", "orientation", "mirroring", "tile_step_size", "labels", "modality"}),
    "torchscript": frozenset(),
    "onnx": frozenset({"providers"}),
}


class ModelSection(_Section):
    """One model the node runs: ``[models.NAME]``. Output keys left unset take ``[output]``'s."""

    kind: Kind = "ainode"
    path: Path | None = None  # the model's file or folder; None (kind ainode): the bundled demo model
    device: Device | None = None  # None: worker.device
    seg_series_number: int | None = Field(None, ge=1)
    sr_series_number: int | None = Field(None, ge=1)
    seg_series_description: str | None = Field(None, max_length=64)
    sr_series_description: str | None = Field(None, max_length=64)
    # monai-bundle: config keys set before the bundle is parsed, e.g. {"displayable_configs#highres" = false}
    overrides: dict[str, Any] | None = None
    # monai-bundle, nnunet-v2: codes and colours of the labels (default: labels.toml in the model's folder)
    labels: Path | None = None
    modality: Literal["CT", "MR", "PT"] | None = None  # when the folder's own word for it is not one of these
    # nnunet-v2: which folds to average, which checkpoint file, the orientation nnU-Net expects when its
    # plans do not say (TotalSegmentator: RAS), test-time mirroring, sliding-window step (fraction of a patch)
    folds: list[int | Literal["all"]] | None = Field(None, min_length=1)
    checkpoint: str | None = Field(None, pattern=r"^[\w.-]+\.pth$")
    orientation: str | None = Field(None, pattern=r"^[LR][PA][SI]$|^[LR][SI][PA]$|^[PA][LR][SI]$|^[PA][SI][LR]$"
                                                  r"|^[SI][LR][PA]$|^[SI][PA][LR]$")
    mirroring: bool | None = None
    tile_step_size: float | None = Field(None, gt=0.0, le=1.0)
    # onnx: ONNX Runtime execution providers in order of preference (default: CUDA for cuda devices, else CPU)
    providers: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _path(self) -> "ModelSection":
        if self.path is None and self.kind != "ainode":
            raise ValueError(f"path: a {self.kind} model needs the path of its folder or file")
        return self

    @model_validator(mode="after")
    def _options(self) -> "ModelSection":
        for key in sorted(self.model_fields_set & self.option_keys()):
            if getattr(self, key) is not None and key not in KIND_OPTIONS[self.kind]:
                takers = [kind for kind, keys in KIND_OPTIONS.items() if key in keys]
                raise ValueError(f"{key}: an option of {' and '.join(takers)} models, not of {self.kind}")
        return self

    @staticmethod
    def option_keys() -> frozenset[str]:
        return frozenset().union(*KIND_OPTIONS.values())

    def options(self) -> dict[str, Any]:
        """The kind-specific settings that are set, as the model registry takes them."""
        return {key: getattr(self, key) for key in sorted(self.option_keys()) if getattr(self, key) is not None}


class DestinationSection(_Section):
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle


class DeliverySection(_Section):
    result_destinations: list[str] = ["pacs"]
    lease_seconds: float = Field(120.0, gt=0)
    backoff_seconds: float = Field(5.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)


class OutputSection(_Section):
    seg_series_number: int = Field(901, ge=1)
    sr_series_number: int = Field(902, ge=1)
    seg_series_description: str = Field("ainode segmentation", max_length=64)
    sr_series_description: str = Field("ainode measurements", max_length=64)
    rejection_series_number: int = Field(903, ge=1)
    rejection_series_description: str = Field("ainode rejection note", max_length=64)
    when_nothing_found: Literal["report", "nothing"] = "report"


class StatusSection(_Section):
    port: int = Field(0, ge=0, le=65535)  # 0: no status page
    bind_address: str = "127.0.0.1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AINODE_", env_nested_delimiter="__", extra="forbid")

    node: NodeSection = NodeSection()
    storage: StorageSection = StorageSection()
    database: DatabaseSection = DatabaseSection()
    queue: QueueSection = QueueSection()
    worker: WorkerSection = WorkerSection()
    models: dict[str, ModelSection] = {"demo": ModelSection()}
    destinations: dict[str, DestinationSection] = {}
    delivery: DeliverySection = DeliverySection()
    output: OutputSection = OutputSection()
    status: StatusSection = StatusSection()

    @model_validator(mode="after")
    def _models(self) -> "Settings":
        if not self.models:
            raise ValueError("models: configure at least one model ([models.NAME])")
        for name in self.models:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
                raise ValueError(f"models.{name}: a model name is 1 to 64 letters, digits, '_', '.' or '-'")
        return self

    @model_validator(mode="after")
    def _destinations_exist(self) -> "Settings":
        for name in self.delivery.result_destinations:
            if name not in self.destinations:
                known = ", ".join(sorted(self.destinations)) or "none"
                raise ValueError(f"delivery.result_destinations names {name!r}, but [destinations] has {known}")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings

    # --- conversions to each stage's own configuration -------------------------------------------
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.storage.root / 'ainode.db').resolve()}"

    def receiver(self) -> ReceiverConfig:
        n = self.node
        limits = GuardConfig(
            maximum_associations=n.maximum_associations, maximum_negotiating=n.maximum_negotiating,
            negotiation_timeout=n.negotiation_timeout_seconds, network_timeout=n.network_timeout_seconds,
            maximum_pdu_size=n.maximum_pdu_size, maximum_dataset_bytes=n.maximum_dataset_bytes,
            maximum_inflated_bytes=n.maximum_inflated_bytes, maximum_inflight_bytes=n.maximum_inflight_bytes)
        return ReceiverConfig(n.ae_title, n.bind_address, n.port, tuple(n.allowed_calling_ae_titles),
                              self.storage.root.resolve(), limits)

    def queue_policy(self) -> QueuePolicy:
        q = self.queue
        return QueuePolicy(settle_seconds=q.settle_seconds, incomplete_settle_seconds=q.incomplete_settle_seconds,
                           lease_seconds=q.lease_seconds, max_attempts=q.max_attempts,
                           backoff_seconds=q.backoff_seconds, backoff_max_seconds=q.backoff_max_seconds)

    def delivery_policy(self) -> DeliveryPolicy:
        d = self.delivery
        return DeliveryPolicy(d.lease_seconds, d.backoff_seconds, d.backoff_max_seconds)

    def destination_map(self) -> dict[str, Destination]:
        return {name: Destination(name, d.host, d.port, d.ae_title) for name, d in self.destinations.items()}

    def model_entries(self) -> list[ModelEntry]:
        return [ModelEntry(name, m.kind, m.path, m.device or self.worker.device, m.options())
                for name, m in self.models.items()]

    def output_settings(self, model: str | None = None) -> OutputSettings:
        o = self.output
        m = self.models[model] if model is not None else ModelSection()
        return OutputSettings(seg_series_number=m.seg_series_number or o.seg_series_number,
                              sr_series_number=m.sr_series_number or o.sr_series_number,
                              seg_series_description=m.seg_series_description or o.seg_series_description,
                              sr_series_description=m.sr_series_description or o.sr_series_description,
                              rejection_series_number=o.rejection_series_number,
                              rejection_series_description=o.rejection_series_description,
                              device_serial_number=self.node.ae_title, when_nothing_found=o.when_nothing_found)


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def _refuse_unknown_sections(environment: Mapping[str, str]) -> None:
    """pydantic-settings ignores an ``AINODE_`` variable whose section it does not know (a typo such as
    ``AINODE_WORKERS__DEVICE``); a setting an operator believes is in force must not be silently dropped."""
    sections = set(Settings.model_fields)
    for key in sorted(environment):
        if key.upper().startswith("AINODE_"):
            section = key[len("AINODE_"):].split("__")[0].lower()
            if section not in sections:
                raise ConfigurationError(f"environment variable {key}: unknown section {section!r} "
                                         f"(sections: {', '.join(sorted(sections))})")


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (if any) with environment overrides; ``ConfigurationError`` when invalid."""
    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigurationError(f"configuration file {str(path)!r} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    data.setdefault("destinations", {"pacs": dict(DEFAULT_DESTINATION)})
    _refuse_unknown_sections(os.environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, f"{source} (+ AINODE_ environment)")) from exc
