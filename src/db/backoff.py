"""How long to wait before trying again: doubling from a base, capped."""

from __future__ import annotations

import datetime as dt


def exponential(base_seconds: float, cap_seconds: float, attempts: int) -> dt.timedelta:
    """Wait after the ``attempts``-th failure: base, 2×base, 4×base… never more than the cap."""
    return dt.timedelta(seconds=min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))


class Backoff:
    """The retry wait of a policy that has ``backoff_seconds`` and ``backoff_max_seconds`` (the queue's for
    jobs, the outbox's for deliveries), so both back off the same way."""

    backoff_seconds: float
    backoff_max_seconds: float

    def backoff(self, attempts: int) -> dt.timedelta:
        return exponential(self.backoff_seconds, self.backoff_max_seconds, attempts)
