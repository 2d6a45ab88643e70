"""Which settled series of a study fill a model's channels (T1c, T1, T2, FLAIR), and in words why a
channel stayed empty: the pure half of a job made of several series. The queue writes what this decides."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from db.routing import Channel, Planned, Router, SettledSeries

K = TypeVar("K", bound=Hashable)


def assign(slots: Sequence[tuple[K, Channel]], candidates: Sequence[tuple[int, SettledSeries]]) -> dict[K, int]:
    """Each slot (a channel still empty) → the key of the candidate series that fills it: in slot order, the
    first candidate whose conditions hold, each candidate at most once. A slot no candidate fits is left out."""
    used: set[int] = set()
    filled: dict[K, int] = {}
    for slot, channel in slots:
        key = next((k for k, series in candidates if k not in used and channel.failing(series) is None), None)
        if key is not None:
            filled[slot], used = key, used | {key}
    return filled


def _described(series: SettledSeries) -> str:
    return f"series {series.series_instance_uid} {series.series_description!r}"


def unfitted(series: SettledSeries, empty: Sequence[Channel]) -> str:
    """Why a settled series of the study became none of the channels a waiting job still lacks."""
    why = "; ".join(f"{c.name}: {c.failing(series) or 'fits, but it is a channel already'}" for c in empty)
    return f"{_described(series)} fits none of the missing channels ({why or 'none missing'})"


def overdue(missing: Sequence[str], channels: Sequence[Channel], study_instance_uid: str, wait_seconds: float,
            settled: Sequence[tuple[SettledSeries, str | None]]) -> str:
    """One line naming each channel still empty when the wait ended and, for it, each settled series of the
    study (with the channel it fills, if any) and the condition that kept it out."""
    by_name = {c.name: c for c in channels}

    def kept_out(series: SettledSeries, filled: str | None, channel: Channel | None) -> str:
        if filled:
            return f"fills channel {filled}"
        if channel is None:
            return "the model no longer declares this channel"
        return channel.failing(series) or "fits"

    parts = []
    for name in missing:
        seen = "; ".join(f"{_described(s)}: {kept_out(s, filled, by_name.get(name))}" for s, filled in settled)
        parts.append(f"channel {name}: no series of study {study_instance_uid} fits within {wait_seconds:g} s"
                     f" ({seen or 'no series settled'})")
    return "; ".join(parts)


def plan_of(route: Router, settled: Sequence[SettledSeries], model: str | None,
            route_name: str | None) -> Planned | None:
    """The plan with channels that routing makes today for one of the study's series for this model and
    route: where a waiting job finds its channels' conditions again."""
    for series in settled:
        for plan in route(series).jobs:
            if plan.channels and plan.model == model and plan.route == route_name:
                return plan
    return None
