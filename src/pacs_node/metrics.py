"""Counters only the receiver's own process knows: every C-STORE it answered, by status, and every
association asked of it, by calling AE title, accepted or refused. A refused instance or association
leaves no row in the database, so these live in memory from the process's start (Prometheus' ``rate``
copes with a restart); everything else the metrics show is read from the database when scraped.

They are process-wide, as counters of a process are, and registered in no registry: whoever serves
``/metrics`` in this process (``ainode.exporter``) adds them to its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import Counter
from pynetdicom import evt

from pacs_node.logs import printable

if TYPE_CHECKING:
    from pynetdicom.events import Event

INSTANCES = Counter("ainode_instances_received", "C-STORE requests this process's receiver answered, by the "
                    "status it returned (0x0000: stored, or already stored)", ["status"], registry=None)
ASSOCIATIONS = Counter("ainode_associations", "Associations requested of this process's receiver, by calling "
                       "AE title and result (accepted, refused)", ["calling_ae_title", "result"], registry=None)
COLLECTORS = (INSTANCES, ASSOCIATIONS)

MAX_AE_TITLES = 64  # distinct calling AE titles kept as labels; a caller that invents titles cannot add more
OTHER_AE_TITLES = "(other)"
_lock = threading.Lock()
_titles: set[str] = set()


def instance_answered(status: int) -> None:
    """Count one C-STORE response (call it with the status code sent back)."""
    INSTANCES.labels(f"0x{status:04X}").inc()


def association(calling_ae_title: str, accepted: bool) -> None:
    """Count one association request, accepted or refused."""
    ASSOCIATIONS.labels(_title(calling_ae_title), "accepted" if accepted else "refused").inc()


def _title(calling_ae_title: str) -> str:
    title = printable(calling_ae_title.strip(), 64)
    with _lock:
        if title in _titles or len(_titles) < MAX_AE_TITLES:
            _titles.add(title)
            return title
    return OTHER_AE_TITLES


def _accepted(event: Event) -> None:
    association(event.assoc.requestor.ae_title, True)


def _rejected(event: Event) -> None:
    association(event.assoc.requestor.ae_title, False)


# pynetdicom handlers that count associations: add them to the receiver's ``evt_handlers``.
HANDLERS = ((evt.EVT_ACCEPTED, _accepted), (evt.EVT_REJECTED, _rejected))
