"""How long to wait before trying again: doubling from a base, capped."""

from __future__ import annotations

import datetime as dt


def exponential(base_seconds: float, cap_seconds: float, attempts: int) -> dt.timedelta:
    """Wait after the ``attempts``-th failure: base, 2×base, 4×base… never more than the cap."""
    return dt.timedelta(seconds=min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))
