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
from pacs_node.dispatch import Destination
from pacs_node.scp import ReceiverConfig
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


class QueueSection(_Section):
    settle_seconds: float = Field(5.0, ge=0)
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_seconds: float = Field(10.0, ge=0)
    backoff_max_seconds: float = Field(600.0, ge=0)


class WorkerSection(_Section):
    model: Path | None = None
    device: str = "auto"
    count: int = Field(1, ge=0, le=64)
    threads: int | None = Field(None, ge=1)
    poll_seconds: float = Field(0.5, gt=0)
    interpolate_missing_slices: int = Field(0, ge=0, le=3)
    max_slice_gap_ratio: float = Field(2.5, ge=1.0, le=10.0)
    merge_frames_of_reference: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
            raise ValueError(f"device {value!r} must be auto, cpu, cuda or cuda:N")
        return value


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
    destinations: dict[str, DestinationSection] = {}
    delivery: DeliverySection = DeliverySection()
    output: OutputSection = OutputSection()
    status: StatusSection = StatusSection()

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
        return ReceiverConfig(n.ae_title, n.bind_address, n.port, tuple(n.allowed_calling_ae_titles),
                              self.storage.root.resolve(), n.maximum_pdu_size, n.network_timeout_seconds)

    def queue_policy(self) -> QueuePolicy:
        q = self.queue
        return QueuePolicy(q.settle_seconds, q.lease_seconds, q.max_attempts, q.backoff_seconds, q.backoff_max_seconds)

    def delivery_policy(self) -> DeliveryPolicy:
        d = self.delivery
        return DeliveryPolicy(d.lease_seconds, d.backoff_seconds, d.backoff_max_seconds)

    def destination_map(self) -> dict[str, Destination]:
        return {name: Destination(name, d.host, d.port, d.ae_title) for name, d in self.destinations.items()}

    def output_settings(self) -> OutputSettings:
        o = self.output
        return OutputSettings(o.seg_series_number, o.sr_series_number, o.seg_series_description,
                              o.sr_series_description, device_serial_number=self.node.ae_title,
                              when_nothing_found=o.when_nothing_found)


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
