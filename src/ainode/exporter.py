"""Prometheus metrics for ``/metrics``: what the database holds, read when scraped (jobs, queue, stage
times, deliveries: every worker on every machine, surviving restarts), the receiver's counters when it
runs in this process (``pacs_node.metrics``), and the free space of the storage root.

A scrape always answers: when the database cannot be read, or does not answer within
``database_timeout`` seconds, ``ainode_database_up`` is 0 and the rest is still there.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from db import overview
from db.engine import Database
from db.errors import one_line
from db.models import utcnow
from pacs_node import metrics as receiver_metrics

log = logging.getLogger(__name__)


def _histogram(name: str, documentation: str, label: str,
               histograms: dict[str, overview.Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for key, h in sorted(histograms.items()):
        buckets = [(repr(bound), n) for bound, n in zip(h.bounds, h.cumulative)] + [("+Inf", h.count)]
        family.add_metric([key], buckets, h.total)
    return family


class _Accumulator:
    def __init__(self, bounds: tuple[float, ...], start: overview.Histogram | None = None) -> None:
        self.bounds = bounds
        self.cumulative = list(start.cumulative) if start else [0] * len(bounds)
        self.count, self.total = (start.count, start.total) if start else (0, 0.0)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for n, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.cumulative[n] += 1

    def histogram(self) -> overview.Histogram:
        return overview.Histogram(self.bounds, tuple(self.cumulative), self.count, self.total)


class StageHistograms:
    """Stage times of every attempt, per stage and (the model's stage) per model, kept current without
    reading all of ``job_events`` at each scrape: summed in SQL once up to an event id, then new rows are
    added one by one. Each update reads the last ``overlap`` ids again, so that a row committed after one
    with a higher id (PostgreSQL hands ids out before commit) is still counted, and counted once."""

    def __init__(self, bounds: tuple[float, ...] = overview.STAGE_BUCKETS, overlap: int = 1000) -> None:
        self.bounds = bounds
        self.overlap = overlap
        self.stages: dict[str, _Accumulator] = {}
        self.models: dict[str, _Accumulator] = {}
        self._base: int | None = None  # events up to this id were summed in SQL
        self._top = 0  # the highest stage event id added since
        self._added: set[int] = set()  # ids above _top - overlap already added

    def update(self, db: Database) -> None:
        if self._base is None:
            base = max(0, overview.last_event_id(db) - self.overlap)
            stages, models = overview.stage_histograms(db, self.bounds, base), \
                overview.inference_histograms(db, self.bounds, base)
            self.stages = {k: _Accumulator(self.bounds, h) for k, h in stages.items()}
            self.models = {k: _Accumulator(self.bounds, h) for k, h in models.items()}
            self._base = self._top = base
        for row in overview.stage_observations(db, after=max(self._base, self._top - self.overlap)):
            if row.event_id in self._added:
                continue
            self._added.add(row.event_id)
            self._top = max(self._top, row.event_id)
            self.stages.setdefault(row.stage, _Accumulator(self.bounds)).observe(row.seconds)
            if row.stage == overview.INFERENCE_STAGE:
                self.models.setdefault(row.model, _Accumulator(self.bounds)).observe(row.seconds)
        self._added = {i for i in self._added if i > self._top - self.overlap}


def database_metrics(db: Database, stage_times: StageHistograms) -> list[Metric]:
    """Every metric read from the database, in one go (raises when it cannot be read)."""
    now = utcnow()
    jobs = GaugeMetricFamily("ainode_jobs", "Jobs per state (all jobs in the database)", labels=["state"])
    for state, n in overview.job_states(db).items():
        jobs.add_metric([state], n)
    depth = overview.queue_depth(db, now)
    deliveries = GaugeMetricFamily("ainode_deliveries", "Deliveries of results per state and destination",
                                   labels=["state", "destination"])
    for (state, destination), n in sorted(overview.delivery_states(db).items()):
        deliveries.add_metric([state, destination], n)
    waiting_since = overview.oldest_waiting_delivery(db)
    stage_times.update(db)
    return [
        jobs,
        GaugeMetricFamily("ainode_queue_depth", "Jobs queued (due now or backing off after a failed attempt)",
                          value=depth.queued),
        GaugeMetricFamily("ainode_queue_due", "Queued jobs a worker may claim now", value=depth.due),
        GaugeMetricFamily("ainode_queue_oldest_age_seconds", "Seconds the longest-waiting due job has waited "
                          "for a worker (0 when none is due)",
                          value=depth.oldest_age_seconds(now)),
        deliveries,
        GaugeMetricFamily("ainode_deliveries_oldest_waiting_age_seconds",
                          "Age of the oldest delivery not sent yet (0 when none)",
                          value=max(0.0, (now - waiting_since).total_seconds()) if waiting_since else 0.0),
        _histogram("ainode_stage_duration_seconds", "Seconds per stage of every attempt recorded", "stage",
                   {k: a.histogram() for k, a in stage_times.stages.items()}),
        _histogram("ainode_inference_duration_seconds",
                   f"Seconds of the model's stage ({overview.INFERENCE_STAGE}) per model", "model",
                   {k: a.histogram() for k, a in stage_times.models.items()}),
    ]


class _Read:
    """One reading of the database's metrics, shared by the scrapes that arrive while it runs."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.metrics: list[Metric] = []
        self.problem: str | None = None


class NodeCollector:
    """The database's metrics, read on a daemon thread so that a database that hangs holds neither the
    scrape nor the process's exit (a scrape waits ``database_timeout`` seconds, then answers without
    them; later scrapes wait for the same reading rather than start another); the disk's free space;
    whether the database answered."""

    def __init__(self, db: Database, storage_root: Path | None, database_timeout: float = 5.0) -> None:
        self.db = db
        self.storage_root = storage_root
        self.database_timeout = database_timeout
        self._lock = threading.Lock()
        self._current: _Read | None = None
        self._stage_times = StageHistograms()  # touched by one reading at a time

    def _run(self, read: _Read) -> None:
        try:
            read.metrics = database_metrics(self.db, self._stage_times)
        except Exception as exc:  # a scrape answers whatever went wrong; the reason is logged
            read.problem = one_line(exc)
        finally:
            read.done.set()

    def _read_database(self) -> tuple[list[Metric], str | None]:
        with self._lock:
            read = self._current
            if read is None or read.done.is_set():
                read = self._current = _Read()
                threading.Thread(target=self._run, args=(read,), name="metrics-database", daemon=True).start()
        if not read.done.wait(self.database_timeout):
            return [], f"no answer within {self.database_timeout:g} s"
        return read.metrics, read.problem

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        families, problem = self._read_database()
        if problem:
            log.warning("metrics: the database cannot be read: %s", problem)
        yield GaugeMetricFamily("ainode_database_up", "1 when the database answered this scrape, 0 when not",
                                value=0 if problem else 1)
        yield GaugeMetricFamily("ainode_database_scrape_seconds", "Seconds the database took to answer this scrape",
                                value=time.perf_counter() - started)
        yield from families
        yield from self._disk()

    def _disk(self) -> Iterator[Metric]:
        if self.storage_root is None:
            return
        try:
            usage = shutil.disk_usage(self.storage_root)
        except OSError as exc:
            log.warning("metrics: cannot read the free space of %s: %s", self.storage_root, exc)
            return
        yield GaugeMetricFamily("ainode_storage_free_bytes", "Bytes free on the storage root's file system "
                                "(for this user)", value=usage.free)
        yield GaugeMetricFamily("ainode_storage_size_bytes", "Size of the storage root's file system",
                                value=usage.total)


def registry(collector: NodeCollector) -> CollectorRegistry:
    """What ``/metrics`` serves: the node's metrics, this process's receiver counters and its resources."""
    found = CollectorRegistry(auto_describe=False)
    found.register(collector)
    for counter in receiver_metrics.COLLECTORS:
        found.register(counter)
    ProcessCollector(registry=found)
    return found


def exposition(found: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and its content type, in the format the scraper asked for (``Accept``)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(found), content_type
