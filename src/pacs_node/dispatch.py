"""The sender: delivers result files from the outbox to their destinations, with C-STORE (a DICOM
destination) or STOW-RS (a DICOMweb one, ``pacs_node.stow``).

One association per file, TCP_NODELAY on (pynetdicom leaves Nagle's algorithm on, which costs ~40 ms
per message), and every outcome recorded on the delivery. A lost response or a refusing peer only
delays a delivery: it is retried with backoff until the peer says success.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event

from db import outbox
from db.engine import Database
from db.errors import PeerFailure, one_line
from db.polling import poll
from pacs_node.status import STORED

log = logging.getLogger("ainode.deliver")



class Sendable(Protocol):
    """A destination of any kind: it sends one file and answers with the status it got (DIMSE codes)."""

    @property
    def name(self) -> str: ...

    def send(self, path: Path, calling_ae_title: str) -> int: ...


@dataclass(frozen=True)
class Destination:
    """A DICOM destination, reached with C-STORE."""

    name: str
    host: str
    port: int
    ae_title: str
    tls: ssl.SSLContext | None = None  # DICOM TLS: what to check the peer against and present to it

    def send(self, path: Path, calling_ae_title: str) -> int:
        return send_file(path, self, calling_ae_title)


def _no_delay(event: Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_file(path: Path, destination: Destination, calling_ae_title: str, timeout: float = 30.0) -> int:
    """C-STORE one file as it is on disk; returns the peer's status or raises ``PeerFailure``."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(meta.file_meta.MediaStorageSOPClassUID, meta.file_meta.TransferSyntaxUID)
    tls_args = (destination.tls, destination.host) if destination.tls else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
    if not assoc.is_established:
        raise PeerFailure(f"{destination.ae_title}@{destination.host}:{destination.port} refused or did not "
                          "answer the association" + (" (or the TLS handshake failed)" if destination.tls else ""))
    try:
        status = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        raise PeerFailure(f"{destination.ae_title} sent no C-STORE response (connection lost or timed out)")
    return int(status.Status)


class Dispatcher:
    """Works through the outbox until stopped."""

    def __init__(self, db: Database, storage_root: Path, calling_ae_title: str,
                 destinations: Mapping[str, Sendable], policy: outbox.DeliveryPolicy, name: str) -> None:
        self.db = db
        self.storage_root = storage_root
        self.calling_ae_title = calling_ae_title
        self.destinations = destinations
        self.policy = policy
        self.name = name

    def deliver_one(self) -> bool:
        """Send the next due delivery, if any; True when one was attempted."""
        task = outbox.claim(self.db, self.name, self.policy)
        if task is None:
            return False
        destination = self.destinations.get(task.destination)
        if destination is None:
            outbox.failed(self.db, task.id, f"destination {task.destination!r} is not configured", self.policy)
            return True
        try:
            status = destination.send(self.storage_root / task.path, self.calling_ae_title)
        except (PeerFailure, OSError) as exc:
            when = outbox.failed(self.db, task.id, one_line(exc), self.policy)
            log.warning("delivery %d of %s to %s failed: %s; next try at %s", task.id, task.sop_instance_uid,
                        task.destination, exc, when)
            return True
        except Exception as exc:
            outbox.failed(self.db, task.id, f"unexpected error: {one_line(exc)}", self.policy)
            log.exception("delivery %d failed unexpectedly", task.id)
            return True
        if status in STORED:
            outbox.delivered(self.db, task.id, status)
            log.info("delivered %s to %s (status 0x%04X)", task.sop_instance_uid, task.destination, status)
        else:
            outbox.failed(self.db, task.id, f"{destination.name} answered status 0x{status:04X}", self.policy,
                          status=status)
        return True

    def run(self, stop: threading.Event, poll_seconds: float = 0.5) -> None:
        poll(self.deliver_one, stop, poll_seconds, log, "the outbox is not reachable")
