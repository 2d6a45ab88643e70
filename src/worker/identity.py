"""Who made a result and what it is called: stable UIDs, series numbers and descriptions.

UIDs are derived from the source instances and the exact model (weights included), so processing the
same series with the same model again gives the same SEG and SR UIDs and a PACS stores no duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid

from worker.modelspec import ModelSpec

SOFTWARE_VERSION = "0.1.0"


@dataclass(frozen=True)
class OutputSettings:
    seg_series_number: int = 901
    sr_series_number: int = 902
    seg_series_description: str = "ainode segmentation"
    sr_series_description: str = "ainode measurements"
    manufacturer: str = "ainode"
    device_serial_number: str = "ainode-1"


@dataclass(frozen=True)
class ResultIdentity:
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    device_uid: str


def result_identity(spec: ModelSpec, weights_digest: str, source_sop_instance_uids: list[str]) -> ResultIdentity:
    model = [spec.name, spec.version, weights_digest]
    sources = sorted(source_sop_instance_uids)

    def uid(*parts: str) -> str:
        return generate_uid(prefix=None, entropy_srcs=[*model, *sources, *parts])

    return ResultIdentity(
        seg_series_instance_uid=uid("SEG series"),
        seg_sop_instance_uid=uid("SEG instance"),
        sr_series_instance_uid=uid("SR series"),
        sr_sop_instance_uid=uid("SR instance"),
        device_uid=generate_uid(prefix=None, entropy_srcs=["ainode device", *model]),
    )
