"""The sections of the configuration file, each validated field by field: a bad key or value is refused
naming it (see ``config.load_settings``)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ainode.access import is_loopback
from worker.models.registry import Kind

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire without backslash


def _ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"AE title {value!r} must be 1 to 16 printable characters, no backslash")
    return value.strip()


DEFAULT_DESTINATION = {"host": "127.0.0.1", "port": 11113, "ae_title": "PACS"}

AETitle = Annotated[str, AfterValidator(_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSSection(_Section):
    """PEM files of the node's DICOM TLS port."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None  # the authorities a caller's certificate must chain to
    require_client_certificate: bool = True  # mutual TLS


class PeerSection(_Section):
    """A caller known by more than its AE title: where it may call from and whether it must use TLS."""

    ae_title: AETitle
    addresses: list[str] = []  # addresses or networks ("10.1.2.3", "10.1.2.0/24"); empty: any
    require_tls: bool = False
    settle_seconds: float | None = Field(None, ge=0)  # this peer's own (it sends one series over several associations)

    @field_validator("addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError as exc:
                raise ValueError(f"{address!r} is not an address or network: {exc}") from exc
        return value


class NodeSection(_Section):
    ae_title: AETitle = "AINODE"
    port: int = Field(11112, ge=0, le=65535)  # plain DICOM; 0: none
    tls_port: int = Field(0, ge=0, le=65535)  # DICOM TLS; 0: none
    tls: TLSSection = TLSSection()
    peers: dict[str, PeerSection] = {}
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

    @model_validator(mode="after")
    def _ports_and_callers(self) -> "NodeSection":
        if not self.port and not self.tls_port:
            raise ValueError("port, tls_port: at least one of them must be set")
        if self.port and self.port == self.tls_port:
            raise ValueError(f"tls_port: {self.tls_port} is also the plain port")
        if self.tls_port and (self.tls.certificate is None or self.tls.private_key is None):
            raise ValueError("tls: a TLS port needs tls.certificate and tls.private_key")
        if self.tls.require_client_certificate and self.tls_port and self.tls.ca_certificates is None:
            raise ValueError("tls.ca_certificates: needed to check client certificates "
                             "(or set tls.require_client_certificate = false)")
        if not self.allowed_calling_ae_titles and not self.peers:
            raise ValueError("allowed_calling_ae_titles: list at least one caller (or [node.peers.NAME]): unknown "
                             "callers are always refused")
        return self


class StorageSection(_Section):
    root: Path = Path("ainode-data")
    minimum_free_gb: float = Field(5.0, ge=0)  # below this (or the percentage) the node takes no more data
    minimum_free_percent: float = Field(5.0, ge=0, le=100)


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
    # a model whose input is several series of a study: how long its job waits for all of them
    channel_wait_seconds: float = Field(600.0, gt=0)


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
    max_slice_gap_ratio: float = Field(2.5, ge=1.0, le=10.0)
    merge_frames_of_reference: bool = False


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
    # a model whose input is several series of one study: for each of its input channels, the conditions
    # (the keys of a route's `when`) that pick the study's series for it, e.g. [models.brats.channels.FLAIR]
    channels: dict[str, dict[str, Any]] | None = None

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
    """A DICOM destination (``kind = "dicom"``: C-STORE to host, port and AE title) or a DICOMweb one
    (``kind = "dicomweb"``: STOW-RS to ``url``)."""

    kind: Literal["dicom", "dicomweb"] = "dicom"
    host: str = ""
    port: int = Field(0, ge=0, le=65535)
    ae_title: AETitle | None = None
    url: str = ""  # the DICOMweb root, e.g. https://pacs.example/dicom-web
    username: str = ""  # HTTP basic authentication for DICOMweb
    password_file: Path | None = None
    tls: bool = False  # DICOM TLS: the destination's certificate checked against ca_certificates
    ca_certificates: Path | None = None  # empty: the system's authorities (DICOM TLS and https)
    certificate: Path | None = None  # this node's, for a destination that requires client certificates
    private_key: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> "DestinationSection":
        if self.kind == "dicom" and (not self.host or not self.port or self.ae_title is None):
            raise ValueError("a DICOM destination needs host, port and ae_title")
        if self.kind == "dicomweb" and not re.match(r"^https?://", self.url):
            raise ValueError(f"url {self.url!r}: a DICOMweb destination needs an http(s) URL")
        return self


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


class RetentionSection(_Section):
    """When patient data is deleted (files only; the database keeps the record, marked purged)."""

    enabled: bool = True
    keep_days: float = Field(7.0, ge=0)  # after every job ended and every delivery succeeded
    keep_failed_days: float = Field(30.0, ge=0)  # failed, rejected or not routed: kept to inspect
    check_minutes: float = Field(60.0, gt=0)


class StatusSection(_Section):
    port: int = Field(0, ge=0, le=65535)  # 0: no status page
    bind_address: str = "127.0.0.1"
    username: str = Field("ainode", min_length=1, max_length=64, pattern=r"^[^:\s]+$")
    password_file: Path | None = None  # HTTP basic authentication for the page and its JSON
    metrics_token_file: Path | None = None  # bearer token for /metrics
    allowed_hosts: list[str] = []  # a page without password: host names it answers besides loopback ones

    @model_validator(mode="after")
    def _authenticated_beyond_loopback(self) -> "StatusSection":
        if self.password_file is None and not is_loopback(self.bind_address):
            raise ValueError(f"status.password_file must be set when status.bind_address ({self.bind_address}) "
                             "is not a loopback address: the page shows patient data")
        return self


class RouteSection(_Section):
    """One ``[[routes]]``: conditions on a settled series (all must hold), the models it goes to, where the
    results go, its priority, and whether evaluation stops when it takes the series."""

    name: str = Field(min_length=1, max_length=64)
    when: dict[str, Any] = {}
    models: list[str] = Field(min_length=1)
    destinations: list[str] | None = None  # None: delivery.result_destinations
    priority: int = 0  # higher is processed first
    stop: bool = True
