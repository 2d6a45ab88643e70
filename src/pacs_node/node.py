"""The node service: the receiver, the settle loop that turns quiet series into jobs, and the sender."""

from __future__ import annotations

import logging
import threading

from db import audit, ingest, leftovers, queue, retention
from db.engine import Database
from db.polling import poll
from db.retention import RetentionPolicy
from pacs_node import listen, scp
from pacs_node.dispatch import Dispatcher

log = logging.getLogger("ainode.node")


class Node:
    def __init__(self, receiver: scp.ReceiverConfig, db: Database, policy: queue.QueuePolicy,
                 dispatcher: Dispatcher, route: queue.Router, receive_db: Database | None = None,
                 retention: RetentionPolicy | None = None, retention_interval: float = 3600.0) -> None:
        """``receive_db``: the receiver's own connection to the database, which waits only briefly for a lock
        so that every C-STORE is answered within a second (0xA700 when the database is held)."""
        self.receiver = scp.Receiver(receiver, receive_db or db)
        self.db = db
        self.policy = policy
        self.dispatcher = dispatcher
        self.route = route
        self.retention = retention
        self.retention_interval = retention_interval
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: listen.Listeners | None = None

    def _settle(self) -> None:
        def step() -> bool:
            self.receiver.associations.record_pending()
            for job_id in queue.enqueue_settled(self.db, self.policy, self.route):
                log.info("queued job %d", job_id)
            return False  # look again after the interval

        poll(step, self.stopping, min(1.0, max(0.1, self.policy.settle_seconds / 4)), log,
             "cannot queue settled series")

    def _purge(self) -> None:
        def step() -> bool:
            assert self.retention is not None
            for item in retention.purge(self.db, self.receiver.config.storage_root, self.retention,
                                        audit.actor("retention")):
                log.info("purged series %s: %d files, %.1f MB (%s)", item.series_instance_uid, len(item.files),
                         item.size_bytes / 1e6, item.reason)
            return False

        poll(step, self.stopping, self.retention_interval, log, "cannot purge")

    def start(self) -> None:
        left = ingest.reconcile_storage(self.db, self.receiver.config.storage_root)
        for path in left.partial_files:
            log.warning("removed %s: a write the last stop interrupted", path)
        for path in left.unrecorded_files:
            log.warning("removed %s: written but never recorded, so never acknowledged", path)
        results = leftovers.reconcile_results(self.db, self.receiver.config.storage_root)
        for path in results.partial_files:
            log.warning("removed %s: a result write that a stopped worker left unfinished", path)
        for path in results.unfinished_files:
            log.warning("removed %s: a result of a job attempt that never completed", path)
        abandoned = ingest.release_abandoned(self.db)
        if abandoned:
            log.info("%d series were still receiving when the node last stopped; they settle as possibly partial",
                     abandoned)
        self._server = listen.serve(self.receiver)
        tasks = [("settle", self._settle), ("deliver", lambda: self.dispatcher.run(self.stopping))]
        if self.retention is not None:
            tasks.append(("retention", self._purge))
        for name, target in tasks:
            thread = threading.Thread(target=target, name=f"ainode-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=35)
