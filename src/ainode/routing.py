"""Which models a settled series goes to: the configured routes, evaluated in order.

A route takes a series when every one of its conditions holds; it names the models that get a job, the
destinations of their results, a priority, and whether evaluation stops there. A series no route takes is
not routed, with each route's first failing condition. Without routes, every model whose modality is the
series' gets a job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from db.errors import ConfigurationError
from db.routing import Channel, Planned, Router, Routing, SettledSeries
from worker.models.spec import ModelSpec

Check = Callable[[SettledSeries], str | None]  # None when the condition holds, else why not


def _any_of(name: str, values: Sequence[str], get: Callable[[SettledSeries], str]) -> Check:
    wanted = {v.upper() for v in values}

    def check(s: SettledSeries) -> str | None:
        return None if get(s).upper() in wanted else f"{name} is {get(s) or 'empty'!r}, not one of {sorted(wanted)}"

    return check


def _pattern(name: str, expression: str, get: Callable[[SettledSeries], str]) -> Check:
    compiled = re.compile(expression)
    return lambda s: None if compiled.search(get(s)) else f"{name} {get(s)!r} does not match /{expression}/"


def _between(name: str, bounds: Sequence[float], get: Callable[[SettledSeries], float | None], unit: str) -> Check:
    low, high = bounds

    def check(s: SettledSeries) -> str | None:
        value = get(s)
        if value is None:
            return f"{name} is not known"
        return None if low <= value <= high else f"{name} {value:g}{unit} is outside {low:g}–{high:g}{unit}"

    return check


def _image_type(contains: Sequence[str], excludes: Sequence[str]) -> Check:
    def check(s: SettledSeries) -> str | None:
        values = {v.upper() for v in s.image_type}
        missing = [v for v in contains if v.upper() not in values]
        found = [v for v in excludes if v.upper() in values]
        shown = "\\".join(s.image_type) or "empty"
        if missing:
            return f"ImageType {shown} lacks {', '.join(missing)}"
        return f"ImageType {shown} has {', '.join(found)}" if found else None

    return check


CONDITIONS: dict[str, Callable[[object], Check]] = {
    "modality": lambda v: _any_of("Modality", _list(v), lambda s: s.modality),
    "body_part_examined": lambda v: _any_of("BodyPartExamined", _list(v), lambda s: s.body_part_examined),
    "series_description": lambda v: _pattern("SeriesDescription", str(v), lambda s: s.series_description),
    "study_description": lambda v: _pattern("StudyDescription", str(v), lambda s: s.study_description),
    "protocol_name": lambda v: _pattern("ProtocolName", str(v), lambda s: s.protocol_name),
    "manufacturer": lambda v: _pattern("Manufacturer", str(v), lambda s: s.manufacturer),
    "sop_class_uid": lambda v: _any_of("SOPClassUID", _list(v), lambda s: s.sop_class_uid),
    "calling_ae_title": lambda v: _any_of("calling AE title", _list(v), lambda s: s.calling_ae_title),
    "slice_thickness": lambda v: _between("SliceThickness", _bounds(v), lambda s: s.slice_thickness, " mm"),
    "slices": lambda v: _between("the number of slices", _bounds(v), lambda s: float(s.instance_count), ""),
}


def _list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _bounds(value: object) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{value!r} is not [low, high]")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class Route:
    name: str
    checks: tuple[tuple[str, Check], ...]  # (key, check), in the order written
    models: tuple[str, ...]
    destinations: tuple[str, ...] | None = None
    priority: int = 0
    stop: bool = True

    @classmethod
    def build(cls, name: str, when: Mapping[str, object], models: Sequence[str],
              destinations: Sequence[str] | None = None, priority: int = 0, stop: bool = True) -> Route:
        """A route from its configuration; ``ValueError`` naming the key for an unknown condition or a bad
        regular expression or range."""
        checks = []
        contains, excludes = when.get("image_type_contains", ()), when.get("image_type_excludes", ())
        for key, value in when.items():
            if key in ("image_type_contains", "image_type_excludes"):
                continue
            if key not in CONDITIONS:
                raise ValueError(f"when.{key}: unknown condition (known: {', '.join(sorted(CONDITIONS))}, "
                                 "image_type_contains, image_type_excludes)")
            try:
                checks.append((key, CONDITIONS[key](value)))
            except re.error as exc:
                raise ValueError(f"when.{key}: {value!r} is not a regular expression: {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise ValueError(f"when.{key}: {value!r} must be [low, high]") from exc
        if contains or excludes:
            checks.append(("image_type", _image_type(_list(contains) if contains else [],
                                                     _list(excludes) if excludes else [])))
        return cls(name, tuple(checks), tuple(models), tuple(destinations) if destinations is not None else None,
                   priority, stop)

    def failing(self, series: SettledSeries) -> str | None:
        """The first condition that does not hold, or None when the route takes the series."""
        for _, check in self.checks:
            if (why := check(series)) is not None:
                return why
        return None


@dataclass(frozen=True)
class Verdict:
    route: str
    takes: bool
    why: str = ""  # the first failing condition, when it does not take the series


@dataclass(frozen=True)
class Inputs:
    """Models whose input is several series of a study: their channels, in the order each model takes them,
    and how long a job waits for all of them."""

    channels: Mapping[str, tuple[Channel, ...]]
    wait_seconds: float = 600.0

    def plan(self, model: str, route: str | None = None, priority: int = 0,
             destinations: tuple[str, ...] | None = None) -> Planned:
        return Planned(model, route, priority, destinations, self.channels.get(model, ()), self.wait_seconds)


NO_CHANNELS = Inputs({})


def channel_rules(models: Mapping[str, ModelSpec], configured: Mapping[str, Mapping[str, Mapping[str, object]]],
                  wait_seconds: float = 600.0) -> Inputs:
    """Each several-series model's channels from ``[models.NAME.channels.CHANNEL]`` (conditions as a route's
    ``when``), in the order the model takes them; ``ConfigurationError`` naming the model and channel when
    the configuration and the model do not agree."""
    out: dict[str, tuple[Channel, ...]] = {}
    for name, spec in models.items():
        given = dict(configured.get(name) or {})
        if not spec.channels:
            if given:
                raise ConfigurationError(f"models.{name}.channels: {spec.name} takes one series, not channels "
                                         f"{sorted(given)}")
            continue
        wanted = list(spec.channels)
        if sorted(given) != sorted(wanted):
            missing, extra = [c for c in wanted if c not in given], [c for c in given if c not in wanted]
            raise ConfigurationError(
                f"models.{name}.channels: {spec.name} takes {len(wanted)} series ({', '.join(wanted)}), each "
                f"picked by conditions in [models.{name}.channels.NAME]"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; unknown: {', '.join(extra)}" if extra else ""))
        channels = []
        for channel in wanted:
            try:
                rule = Route.build(f"{name}.{channel}", given[channel], ())
            except ValueError as exc:
                raise ConfigurationError(f"models.{name}.channels.{channel}.{exc}") from exc
            channels.append(Channel(channel, rule.failing))
        out[name] = tuple(channels)
    return Inputs(out, wait_seconds)


def evaluate(routes: Sequence[Route], series: SettledSeries,
             inputs: Inputs = NO_CHANNELS) -> tuple[Routing, list[Verdict]]:
    """The jobs the routes plan for ``series``, and each route's verdict (``ainode route explain``)."""
    plans: list[Planned] = []
    verdicts: list[Verdict] = []
    for route in routes:
        why = route.failing(series)
        verdicts.append(Verdict(route.name, why is None, why or ""))
        if why is None:
            plans += [inputs.plan(m, route.name, route.priority, route.destinations) for m in route.models
                      if m not in {p.model for p in plans}]
            if route.stop:
                break
    reason = "; ".join(f"{v.route}: {v.why}" for v in verdicts if not v.takes)
    return Routing(tuple(plans), "" if plans else f"no route takes it ({reason})" if verdicts else "no routes"), \
        verdicts


def by_routes(routes: Sequence[Route], inputs: Inputs = NO_CHANNELS) -> Router:
    return lambda series: evaluate(routes, series, inputs)[0]


def by_modality(models: Mapping[str, ModelSpec], inputs: Inputs = NO_CHANNELS) -> Router:
    """Without routes: every model whose modality is the series' gets a job."""
    def route(series: SettledSeries) -> Routing:
        taken = tuple(name for name, spec in models.items() if spec.modality == series.modality)
        if taken:
            return Routing(tuple(inputs.plan(name) for name in taken))
        offer = ", ".join(f"{name} takes {spec.modality}" for name, spec in models.items())
        return Routing((), f"no model takes {series.modality or 'a series without modality'} ({offer})")

    return route


def facts(ds: Dataset, instances: int, calling_ae_title: str = "") -> SettledSeries:
    """A series' facts read from one of its headers (``ainode route explain`` on a folder of files), as the
    receiver records them."""
    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    image_type = ds.get("ImageType") or []
    thickness = ds.get("SliceThickness")
    return SettledSeries(
        text("SeriesInstanceUID"), text("Modality"), text("SeriesDescription"), text("StudyDescription"),
        text("ProtocolName"), text("BodyPartExamined"),
        tuple(str(v) for v in ([image_type] if isinstance(image_type, str) else image_type)), text("Manufacturer"),
        float(thickness) if thickness not in (None, "") else None, instances, text("SOPClassUID"), calling_ae_title)
