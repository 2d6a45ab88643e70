"""What a Prometheus scrape of /metrics and a look at the status page cost as the database grows.

Fills a database (SQLite by default, or ``--database-url``) with N jobs spread over a year, as a node
that has run that long leaves it (per job: a series, 8 events of which 4 stage times, a SEG and an SR, a
delivery of each; a few jobs failed, rejected or queued, a few deliveries waiting), then times GET
/metrics (the first after start-up sums every stage time in SQL; later ones add new rows) and GET
/ on a status server over it: the first request and the median of ``--rounds`` more.

    .venv/bin/python benchmarks/status_scrape.py [--jobs 1000 10000 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from ainode.status import StatusServer
from db.engine import Database
from db.models import Delivery, Job, JobEvent, Result, Series, Study, utcnow

STAGES = {"assemble": 0.6, "segment": 9.0, "postprocess": 0.7, "encode": 2.5}


def fill(db: Database, jobs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = utcnow()
    studies, series, rows, events, results, deliveries = [], [], [], [], [], []
    for n in range(1, jobs + 1):
        created = now - dt.timedelta(seconds=(jobs - n + rng.random()) * 365 * 86400 / jobs)  # in id order
        state = rng.choices(["succeeded", "failed", "rejected", "queued"], [93, 3, 3, 1])[0]
        if n % 4 == 1:
            studies.append({"id": n // 4 + 1, "study_instance_uid": f"1.2.826.0.1.{n}", "patient_id": f"P{n}",
                            "patient_name": f"Doe^Patient{n}", "created_at": created})
        series.append({"id": n, "study_id": (n - 1) // 4 + 1, "series_instance_uid": f"1.2.826.0.2.{n}",
                       "modality": "CT", "state": "queued", "instance_count": 300, "first_received_at": created,
                       "last_received_at": created, "released_at": created})
        finished = created + dt.timedelta(seconds=20)
        rows.append({"id": n, "series_id": n, "state": state, "model": "ainode-demo-chest-ct", "attempts": 1,
                     "max_attempts": 3, "not_before": created, "created_at": created,
                     "finished_at": None if state == "queued" else finished,
                     "error": "missing slice" if state in ("failed", "rejected") else None})
        kinds = ["queued", "claimed", *(["stage"] * 4), state if state != "queued" else "retry", "requeued"]
        stages = iter(STAGES.items())
        for kind in kinds:
            stage, typical = next(stages) if kind == "stage" else (None, 0.0)
            events.append({"job_id": n, "at": created, "kind": kind, "stage": stage, "attempt": 1, "message": "",
                           "seconds": rng.lognormvariate(0, 0.3) * typical if stage else None})
        if state == "succeeded":
            for k, kind in enumerate(("SEG", "SR")):
                result_id = 2 * n + k
                results.append({"id": result_id, "job_id": n, "kind": kind, "sop_class_uid": "1.2",
                                "sop_instance_uid": f"1.2.826.0.3.{result_id}", "series_instance_uid": "1.2",
                                "path": f"results/{result_id}.dcm", "created_at": finished})
                waiting = rng.random() < 0.002
                deliveries.append({"result_id": result_id, "destination": "pacs",
                                   "state": "pending" if waiting else "delivered", "attempts": 1,
                                   "not_before": finished, "created_at": finished,
                                   "delivered_at": None if waiting else finished})
    with db.engine.begin() as connection:
        for model, values in ((Study, studies), (Series, series), (Job, rows), (JobEvent, events),
                              (Result, results), (Delivery, deliveries)):
            for start in range(0, len(values), 20000):
                connection.execute(model.__table__.insert(), values[start:start + 20000])


def timed(url: str, rounds: int) -> tuple[float, float, int]:
    """Seconds of the first request, the median of the next ``rounds``, and the body's size."""
    times, size = [], 0
    for _ in range(rounds + 1):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as response:
            size = len(response.read())
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:]), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default="", help="an empty database (default: SQLite in a temp folder)")
    args = parser.parse_args()
    print(f"{'jobs':>8} {'events':>9} {'fill s':>7} {'first /metrics s':>17} {'/metrics s':>11} {'bytes':>7} "
          f"{'/ s':>7} {'bytes':>7}")
    for count in args.jobs:
        with tempfile.TemporaryDirectory() as folder:
            db = Database(args.database_url or f"sqlite:///{Path(folder) / 'ainode.db'}")
            db.migrate()
            start = time.perf_counter()
            fill(db, count)
            filled = time.perf_counter() - start
            server = StatusServer(db, "127.0.0.1", 0, storage_root=Path(folder), database_timeout=60).start()
            try:
                first, scrape, scrape_bytes = timed(server.url + "metrics", args.rounds)
                _, look, look_bytes = timed(server.url, args.rounds)
            finally:
                server.stop()
                db.dispose()
            print(f"{count:>8} {count * 8:>9} {filled:>7.1f} {first:>17.3f} {scrape:>11.3f} {scrape_bytes:>7} "
                  f"{look:>7.3f} {look_bytes:>7}")
            if args.database_url:
                break  # one size per empty database given


if __name__ == "__main__":
    main()
