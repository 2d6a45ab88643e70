"""The loop every background task of the node runs (settling series, delivering results, claiming jobs,
renewing a lease): do a step, wait when there was nothing to do, never die of one failure."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


def poll(step: Callable[[], bool], stop: threading.Event, interval: float, log: logging.Logger,
         failure: str) -> None:
    """Call ``step`` until ``stop`` is set. After a step that did work (True) go straight on; after one
    that found nothing to do (False) or raised (logged as ``failure``), wait ``interval`` seconds."""
    while not stop.is_set():
        try:
            busy = step()
        except Exception:
            log.exception(failure)
            busy = False
        if not busy:
            stop.wait(interval)
