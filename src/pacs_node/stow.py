"""A DICOMweb destination: results stored with STOW-RS (PS3.18 10.5), through ``dicomweb-client``, with the
same retries and recorded status as a C-STORE destination."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from db.errors import PeerFailure
from pacs_node.status import COERCION_OF_DATA_ELEMENTS, SUCCESS, UNSPECIFIED_FAILURE


@dataclass(frozen=True)
class StowDestination:
    """``url`` is the DICOMweb root (e.g. ``http://orthanc:8042/dicom-web``); basic authentication when a
    username is given; ``verify`` the authorities an https server's certificate is checked against."""

    name: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    verify: str | bool = True
    timeout: float = 60.0

    def send(self, path: Path, calling_ae_title: str) -> int:
        """STOW one file; the status as DIMSE would say it, or ``PeerFailure`` with the HTTP answer."""
        dataset = dcmread(path)
        session = requests.Session()
        session.verify = self.verify
        session.headers["User-Agent"] = f"ainode ({calling_ae_title})"
        if self.username:
            session.auth = (self.username, self.password)
        client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        try:
            answer = client.store_instances([dataset])
        except requests.HTTPError as exc:
            response = exc.response
            detail = f"HTTP {response.status_code} {response.reason}" if response is not None else str(exc)
            raise PeerFailure(f"{self.name} ({self.url}) refused the STOW-RS request: {detail}") from exc
        except requests.RequestException as exc:
            raise PeerFailure(f"{self.name} ({self.url}) did not answer the STOW-RS request: {exc}") from exc
        finally:
            session.close()
        failed = [item for item in answer.get("FailedSOPSequence", [])
                  if item.get("ReferencedSOPInstanceUID") == dataset.SOPInstanceUID]
        if failed:
            return int(failed[0].get("FailureReason", UNSPECIFIED_FAILURE))
        warned = answer.get("WarningReason")
        return COERCION_OF_DATA_ELEMENTS if warned is not None else SUCCESS
