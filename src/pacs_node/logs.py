"""Logging what peers send without letting them write the log: their text escaped to one bounded line,
and refusals rate-limited so that a hostile or broken sender cannot flood the disk."""

from __future__ import annotations

import logging
import threading
import time


def printable(value: object, limit: int = 200) -> str:
    """Peer-supplied text (an AE title, a UID, a decoder's message quoting bytes) as one line of printable
    ASCII: anything else escaped, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RefusalLog:
    """One line per refused input (or per failure that each instance of a flood meets, such as a full disk),
    at most ``burst`` lines per ``window`` seconds; what is held back is counted and reported in one line
    when the window ends."""

    def __init__(self, logger: logging.Logger, burst: int = 20, window: float = 10.0, level: int = logging.WARNING,
                 what: str = "refusals") -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.level = level
        self.what = what
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._logged = 0
        self._held = 0

    def refused(self, calling_ae_title: str, reason: object) -> None:
        """An instance refused: who sent it and why."""
        self.line(f"refused an instance from {printable(calling_ae_title, 16)}: {printable(reason)}")

    def line(self, text: str) -> None:
        """One line (already escaped), unless the burst for this window is spent."""
        now = time.monotonic()
        with self._lock:
            if now - self._started > self.window:
                if self._held:
                    self.logger.log(self.level, "%d more %s in the last %.0f s were not logged one by one",
                                    self._held, self.what, now - self._started)
                self._started, self._logged, self._held = now, 0, 0
            if self._logged >= self.burst:
                self._held += 1
                return
            self._logged += 1
        self.logger.log(self.level, "%s", text)
