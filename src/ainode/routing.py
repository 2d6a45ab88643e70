"""Which models a settled series goes to. Until routing rules exist, every model whose declared modality
is the series' gets a job; a series no model takes says which models there are and what they take."""

from __future__ import annotations

from collections.abc import Mapping

from db.queue import Router, Routing, SettledSeries
from worker.models.spec import ModelSpec


def by_modality(models: Mapping[str, ModelSpec]) -> Router:
    def route(series: SettledSeries) -> Routing:
        taken = tuple(name for name, spec in models.items() if spec.modality == series.modality)
        if taken:
            return Routing(taken)
        offer = ", ".join(f"{name} takes {spec.modality}" for name, spec in models.items())
        return Routing((), f"no model takes {series.modality or 'a series without modality'} ({offer})")

    return route
