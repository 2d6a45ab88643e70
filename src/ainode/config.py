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
from typing import Any

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ainode.access import Access, read_secret
from ainode.routing import Route
from ainode.sections import (
    DEFAULT_DESTINATION,
    DatabaseSection,
    DeliverySection,
    DestinationSection,
    ModelSection,
    NodeSection,
    OutputSection,
    QueueSection,
    RetentionSection,
    RouteSection,
    StatusSection,
    StorageSection,
    WorkerSection,
)
from db.errors import ConfigurationError
from db.outbox import DeliveryPolicy
from db.queue import QueuePolicy
from db.retention import RetentionPolicy
from db.storage import Watermark
from pacs_node.connection import GuardConfig
from pacs_node.dispatch import Destination, Sendable
from pacs_node.peers import Peer
from pacs_node.scp import ReceiverConfig
from pacs_node.stow import StowDestination
from pacs_node.tls import TLSFiles, client_context
from worker.models.registry import ModelEntry
from worker.results.identity import OutputSettings


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
    retention: RetentionSection = RetentionSection()
    routes: list[RouteSection] = []

    @model_validator(mode="after")
    def _models(self) -> "Settings":
        if not self.models:
            raise ValueError("models: configure at least one model ([models.NAME])")
        for name in self.models:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
                raise ValueError(f"models.{name}: a model name is 1 to 64 letters, digits, '_', '.' or '-'")
        return self

    @model_validator(mode="after")
    def _routes(self) -> "Settings":
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"routes: names must differ ({', '.join(names)})")
        for route in self.routes:
            for model in route.models:
                if model not in self.models:
                    raise ValueError(f"routes[{route.name}].models: {model!r} is not a configured model "
                                     f"(models: {', '.join(sorted(self.models))})")
            for destination in route.destinations or []:
                if destination not in self.destinations:
                    raise ValueError(f"routes[{route.name}].destinations: {destination!r} is not a configured "
                                     f"destination (destinations: {', '.join(sorted(self.destinations)) or 'none'})")
            try:
                self._route(route)
            except ValueError as exc:
                raise ValueError(f"routes[{route.name}].{exc}") from exc
        return self

    @model_validator(mode="after")
    def _channels(self) -> "Settings":
        for name, model in self.models.items():
            for channel, when in (model.channels or {}).items():
                try:
                    Route.build(channel, when, ())
                except ValueError as exc:
                    raise ValueError(f"models.{name}.channels.{channel}.{exc}") from exc
        return self

    def channel_conditions(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``[models.NAME.channels]`` of every model that has them (``ainode.routing.channel_rules``)."""
        return {name: dict(m.channels) for name, m in self.models.items() if m.channels}

    @staticmethod
    def _route(route: RouteSection) -> Route:
        return Route.build(route.name, route.when, route.models, route.destinations, route.priority, route.stop)

    def route_rules(self) -> list[Route]:
        return [self._route(r) for r in self.routes]

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
        tls = TLSFiles(n.tls.certificate, n.tls.private_key, n.tls.ca_certificates,
                       n.tls.require_client_certificate) if n.tls_port else None
        peers = tuple(Peer.parse(name, p.ae_title, p.addresses, p.require_tls, p.settle_seconds)
                      for name, p in n.peers.items())
        return ReceiverConfig(n.ae_title, n.bind_address, n.port, tuple(n.allowed_calling_ae_titles),
                              self.storage.root.resolve(), limits, peers, n.tls_port, tls, self.watermark())

    def watermark(self) -> Watermark:
        return Watermark(int(self.storage.minimum_free_gb * 2**30), self.storage.minimum_free_percent / 100)

    def queue_policy(self) -> QueuePolicy:
        q = self.queue
        return QueuePolicy(settle_seconds=q.settle_seconds, incomplete_settle_seconds=q.incomplete_settle_seconds,
                           lease_seconds=q.lease_seconds, max_attempts=q.max_attempts,
                           backoff_seconds=q.backoff_seconds, backoff_max_seconds=q.backoff_max_seconds)

    def retention_policy(self) -> RetentionPolicy | None:
        r = self.retention
        return RetentionPolicy(r.keep_days, r.keep_failed_days) if r.enabled else None

    def delivery_policy(self) -> DeliveryPolicy:
        d = self.delivery
        return DeliveryPolicy(d.lease_seconds, d.backoff_seconds, d.backoff_max_seconds)

    def destination_map(self) -> dict[str, Sendable]:
        """The destinations, their TLS contexts built now: a missing or wrong certificate stops start-up."""
        def destination(name: str, d: DestinationSection) -> Sendable:
            if d.kind == "dicomweb":
                password = read_secret(d.password_file, f"destinations.{name}.password_file") \
                    if d.password_file else ""
                return StowDestination(name, d.url, d.username, password,
                                       str(d.ca_certificates) if d.ca_certificates else True)
            files = TLSFiles(d.certificate, d.private_key, d.ca_certificates)
            return Destination(name, d.host, d.port, str(d.ae_title),
                               client_context(files, f"destinations.{name}") if d.tls else None)

        return {name: destination(name, d) for name, d in self.destinations.items()}

    def status_access(self) -> Access:
        """The status page's credentials, read from their files now (``ConfigurationError`` naming the key)."""
        s = self.status
        return Access(s.username, read_secret(s.password_file, "status.password_file") if s.password_file else "",
                      read_secret(s.metrics_token_file, "status.metrics_token_file") if s.metrics_token_file else "",
                      tuple(name.lower() for name in s.allowed_hosts))

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
