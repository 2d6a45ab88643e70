"""The worker loop: claim a job of one of its models, keep its lease alive while that model's pipeline
processes it, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from db import queue
from db.engine import Database
from db.errors import RejectedInput, one_line
from db.polling import poll
from worker.pipeline import Pipeline

log = logging.getLogger("ainode.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RunnerConfig:
    destinations: tuple[str, ...]
    poll_seconds: float = 0.5


class Worker:
    def __init__(self, db: Database, policy: queue.QueuePolicy, pipelines: Mapping[str, Pipeline],
                 config: RunnerConfig, name: str | None = None) -> None:
        """``pipelines``: one per configured model name, each with its loaded runtime."""
        self.db = db
        self.policy = policy
        self.pipelines = dict(pipelines)
        self.loaded = {model: queue.Loaded(p.spec.version, p.runtime.device) for model, p in self.pipelines.items()}
        self.config = config
        self.name = name or worker_name()

    def _heartbeat(self, job_id: int, done: threading.Event) -> None:
        def beat() -> bool:
            if not queue.heartbeat(self.db, job_id, self.name, self.policy):
                log.warning("job %d is no longer ours (lease lost)", job_id)
                done.set()
            return False  # wait a third of the lease before the next beat

        poll(beat, done, max(0.2, self.policy.lease_seconds / 3), log, f"heartbeat for job {job_id} failed")

    def run_one(self) -> bool:
        """Process the next job, if any; True when one was processed."""
        job = queue.claim(self.db, self.name, self.policy, self.loaded)
        if job is None:
            return False
        log.info("job %d: series %s, model %s, attempt %d", job.id, job.series_instance_uid, job.model, job.attempt)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, done), daemon=True)
        beat.start()

        def report(stage: str, seconds: float, message: str) -> None:
            queue.record_stage(self.db, job.id, self.name, stage, seconds, message)

        try:
            try:
                results = self.pipelines[job.model].process(job, report)
            finally:
                done.set()
        except RejectedInput as exc:
            queue.fail(self.db, job.id, self.name, one_line(exc), self.policy, retry=False)
            log.warning("job %d rejected: %s", job.id, exc)
            return True
        except Exception as exc:
            state = queue.fail(self.db, job.id, self.name, one_line(exc), self.policy, retry=True)
            log.exception("job %d attempt %d failed (now %s)", job.id, job.attempt, state)
            return True
        if queue.complete(self.db, job.id, self.name, results, list(self.config.destinations)):
            log.info("job %d succeeded: %d objects", job.id, len(results))
        else:
            log.warning("job %d finished, but another worker holds it now; results not recorded", job.id)
        return True

    def run(self, stop: threading.Event) -> None:
        models = ", ".join(f"{model}: {p.spec.name} {p.spec.version} on {p.runtime.device}"
                           for model, p in self.pipelines.items())
        log.info("worker %s ready (%s)", self.name, models)
        poll(self.run_one, stop, self.config.poll_seconds, log, "the queue is not reachable")
