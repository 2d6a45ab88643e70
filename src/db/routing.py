"""What the queue asks of routing when a series settles, and what routing answers: the series' facts as
the database holds them, and the jobs to make (model, route, priority, destinations) or why there are
none. The rules themselves are configuration (``ainode.routing``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from db.models import Series


@dataclass(frozen=True)
class SettledSeries:
    """What routing conditions look at, from the series' first instance and its study."""

    series_instance_uid: str
    modality: str
    series_description: str = ""
    study_description: str = ""
    protocol_name: str = ""
    body_part_examined: str = ""
    image_type: tuple[str, ...] = ()
    manufacturer: str = ""
    slice_thickness: float | None = None
    instance_count: int = 0
    sop_class_uid: str = ""
    calling_ae_title: str = ""

    @classmethod
    def of(cls, series: Series) -> SettledSeries:
        return cls(series.series_instance_uid, series.modality, series.series_description,
                   series.study.study_description, series.protocol_name, series.body_part_examined,
                   tuple(v for v in series.image_type.split("\\") if v), series.manufacturer, series.slice_thickness,
                   series.instance_count, series.sop_class_uid, series.calling_ae_title)


@dataclass(frozen=True)
class Channel:
    """One input of a model made of several series of a study, filled by the first settled series of the
    study the conditions take."""

    name: str  # e.g. "T1c"
    failing: Callable[[SettledSeries], str | None]  # None when the series fits, else the first failing condition


@dataclass(frozen=True)
class Planned:
    """One job to make: its model, the route that chose it, its priority (higher first) and destinations
    (None: the node's default ones). A model with ``channels`` runs once on several series of the study,
    one per channel, when all have settled; a study whose channels are not all filled within
    ``channel_wait_seconds`` of the first is rejected, naming the missing ones."""

    model: str
    route: str | None = None
    priority: int = 0
    destinations: tuple[str, ...] | None = None
    channels: tuple[Channel, ...] = ()
    channel_wait_seconds: float = 600.0


@dataclass(frozen=True)
class Routing:
    """The jobs a series gets, or, when none, why (each route's first failing condition), for people."""

    jobs: tuple[Planned, ...]
    reason: str = ""

    @classmethod
    def to(cls, *models: str) -> Routing:
        return cls(tuple(Planned(model) for model in models))


Router = Callable[[SettledSeries], Routing]
