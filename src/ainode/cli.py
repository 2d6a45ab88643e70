"""The ``ainode`` command: wires configuration, the DICOM node, the worker and the database together.

The node's own commands (serve, worker, status) are here; ``ainode.operate`` adds those for people who run
it, ``ainode.research`` those for people who make models.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ainode.app import (
    ConfigOption,
    app,
    console,
    describe_models,
    fail,
    log,
    opened,
    setup_logging,
    stop_on_signals,
)
from db.errors import ConfigurationError

if TYPE_CHECKING:
    from ainode.access import Access
    from ainode.config import Settings
    from ainode.status import StatusServer
    from db.engine import Database


def _worker_command(config: Optional[Path]) -> list[str]:
    command = [sys.executable, "-m", "ainode.cli", "worker"]
    return command + (["--config", str(config)] if config else [])


@app.command()
def serve(config: ConfigOption = None, verbose: bool = False) -> None:
    """Run the node: DICOM receiver, settle loop, result sender, and worker.count worker processes."""
    setup_logging(verbose)
    with opened(config) as (settings, db):
        _serve(settings, db, config)


def _serve(settings: Settings, db: Database, config: Optional[Path]) -> None:
    from ainode.routing import by_modality, by_routes, channel_rules
    from ainode.supervise import WorkerPool
    from db.engine import Database
    from pacs_node.dispatch import Dispatcher
    from pacs_node.node import Node

    settings.storage.root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        destinations = settings.destination_map()
    except ConfigurationError as exc:
        fail(str(exc))
    dispatcher = Dispatcher(db, settings.storage.root.resolve(), settings.node.ae_title, destinations,
                            settings.delivery_policy(), name=f"sender:{os.getpid()}")
    receive_db = Database(settings.database_url, min(settings.node.database_wait_seconds,
                                                     settings.database.busy_timeout_seconds))
    described = describe_models(settings)  # every model's files checked before the node listens
    try:
        inputs = channel_rules(described, settings.channel_conditions(), settings.queue.channel_wait_seconds)
    except ConfigurationError as exc:
        fail(str(exc))
    router = by_routes(settings.route_rules(), inputs) if settings.routes else by_modality(described, inputs)
    node = Node(settings.receiver(), db, settings.queue_policy(), dispatcher, router,
                receive_db, settings.retention_policy(), settings.retention.check_minutes * 60)
    access = _status_access(settings) if settings.status.port else None  # a bad secret stops us before we listen
    try:
        node.start()
    except OSError as exc:
        fail(f"cannot listen on {settings.node.bind_address}:{settings.node.port}: {exc.strerror or exc}")
    except ConfigurationError as exc:
        fail(str(exc))
    page = _status_page(settings, db, settings.status.port, access) if access else None
    workers = WorkerPool(_worker_command(config), settings.worker.count)
    log.info("ainode serving as %s on %s:%d with %d worker(s)", settings.node.ae_title, settings.node.bind_address,
             settings.node.port, settings.worker.count)
    refused = False
    try:
        while not stop.wait(1.0):
            if not workers.restart_exited():
                refused = True
                break
    finally:
        if page is not None:
            page.stop()
        node.stop()
        workers.stop()
        receive_db.dispose()
        log.info("ainode stopped")
    if refused:
        raise typer.Exit(2)


def _status_access(settings: Settings) -> Access:
    try:
        return settings.status_access()
    except ConfigurationError as exc:
        fail(f"invalid configuration\n{exc}")


def _status_page(settings: Settings, db: Database, port: int, access: Access) -> StatusServer:
    from ainode.status import StatusServer

    address = settings.status.bind_address
    try:
        page = StatusServer(db, address, port, access, settings.storage.root.resolve(),
                            settings.queue.max_attempts, watermark=settings.watermark()).start()
    except OSError as exc:
        fail(f"the status page cannot listen on {address}:{port}: {exc.strerror or exc}")
    log.info("status page at %s (%s)", page.url,
             f"basic authentication as {access.username}" if access.protected else "no password: loopback only")
    return page


@app.command()
def status(config: ConfigOption = None,
           port: Annotated[Optional[int], typer.Option(help="Port (default: status.port, else 8080)")] = None,
           verbose: bool = False) -> None:
    """Serve the status page alone (queue, jobs, failed jobs with a retry button, deliveries; /api/jobs as JSON;
    /metrics) until stopped."""
    setup_logging(verbose)
    with opened(config) as (settings, db):
        stop = threading.Event()
        stop_on_signals(stop)
        page = _status_page(settings, db, port or settings.status.port or 8080, _status_access(settings))
        console.print(f"status page at {page.url}")
        try:
            stop.wait()
        finally:
            page.stop()


@app.command()
def worker(config: ConfigOption = None, verbose: bool = False,
           supervisor: Annotated[Optional[int], typer.Option(hidden=True, help="pid of the ainode serve that "
                                                             "started this worker: stop when it is gone")] = None,
           ) -> None:
    """Run one worker: claims jobs from the database and processes them (run several on several machines)."""
    from worker.models import registry
    from worker.pipeline import Pipeline, PipelineConfig
    from worker.runner import RunnerConfig, Worker

    setup_logging(verbose)
    with opened(config) as (settings, db):
        pipelines = {}
        for entry in settings.model_entries():
            try:
                runtime = registry.load(entry, settings.worker.threads)
            except ConfigurationError as exc:
                fail(str(exc))
            w = settings.worker
            pipelines[entry.name] = Pipeline(runtime, PipelineConfig(
                settings.storage.root.resolve(), settings.output_settings(entry.name), w.interpolate_missing_slices,
                w.max_slice_gap_ratio, w.merge_frames_of_reference))
        stop = threading.Event()
        stop_on_signals(stop)
        if supervisor is not None:
            from ainode.supervise import watch_parent

            watch_parent(supervisor, stop)
        Worker(db, settings.queue_policy(), pipelines,
               RunnerConfig(tuple(settings.delivery.result_destinations), settings.worker.poll_seconds)).run(stop)


from ainode import operate, research  # noqa: E402, F401 - their commands join the application, after the node's


def main() -> None:
    app(prog_name="ainode")


if __name__ == "__main__":
    main()
