"""Who made a result and what it is called: stable UIDs, series numbers and descriptions.

UIDs are derived from the source instances and the exact model (weights included), so processing the
same series with the same model again gives the same SEG and SR UIDs and a PACS stores no duplicate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from worker.models.spec import ModelSpec


def _software_version() -> str:
    try:
        return version("ainode")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


SOFTWARE_VERSION = _software_version()

_NAMESPACE = uuid.UUID("7f0b8f3e-5a8e-4c54-9d1e-6b1f0d2c9a11")


def stable_uid(*parts: str) -> str:
    """A UID under the UUID-derived root 2.25 that depends only on ``parts`` (RFC 4122 name-based)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(0).join(parts)).int}"


@dataclass(frozen=True)
class OutputSettings:
    seg_series_number: int = 901
    sr_series_number: int = 902
    seg_series_description: str = "ainode segmentation"
    sr_series_description: str = "ainode measurements"
    rejection_series_number: int = 903
    rejection_series_description: str = "ainode rejection note"
    manufacturer: str = "ainode"
    device_serial_number: str = "ainode-1"
    when_nothing_found: str = "report"  # "report": an SR that says so; "nothing": no output


@dataclass(frozen=True)
class ResultIdentity:
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    device_uid: str
    weights_digest: str = ""


def result_identity(spec: ModelSpec, weights_digest: str, source_sop_instance_uids: list[str]) -> ResultIdentity:
    model = [spec.name, spec.version, weights_digest]
    sources = sorted(source_sop_instance_uids)

    def uid(*parts: str) -> str:
        return stable_uid(*model, *sources, *parts)

    return ResultIdentity(
        seg_series_instance_uid=uid("SEG series"),
        seg_sop_instance_uid=uid("SEG instance"),
        sr_series_instance_uid=uid("SR series"),
        sr_sop_instance_uid=uid("SR instance"),
        device_uid=stable_uid("ainode device", *model),
        weights_digest=weights_digest,
    )
