"""The ``ainode`` command: wires configuration, the DICOM node, the worker and the database together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

from ainode import training_commands
from db.errors import ConfigurationError

if TYPE_CHECKING:
    from ainode.config import Settings
    from ainode.status import StatusServer
    from db.engine import Database

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
log = logging.getLogger("ainode")

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="TOML configuration file (see config/ainode.toml)")
]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _settings(config: Optional[Path]) -> Settings:
    from ainode.config import load_settings

    try:
        return load_settings(config)
    except ConfigurationError as exc:
        _fail(f"invalid configuration\n{exc}")


def _database(settings: Settings) -> Database:
    from db.engine import Database

    try:
        return Database(settings.database_url)
    except ConfigurationError as exc:
        _fail(str(exc))


@contextmanager
def _opened(config: Optional[Path]) -> Iterator[tuple[Settings, Database]]:
    """Settings and the database, migrated; what every command that reads or writes the queue starts with."""
    settings = _settings(config)
    db = _database(settings)
    try:
        db.migrate()
        yield settings, db
    finally:
        db.dispose()


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _worker_command(config: Optional[Path]) -> list[str]:
    command = [sys.executable, "-m", "ainode.cli", "worker"]
    return command + (["--config", str(config)] if config else [])


@app.command()
def serve(config: ConfigOption = None, verbose: bool = False) -> None:
    """Run the node: DICOM receiver, settle loop, result sender, and worker.count worker processes."""
    _logging(verbose)
    with _opened(config) as (settings, db):
        _serve(settings, db, config)


def _serve(settings: Settings, db: Database, config: Optional[Path]) -> None:
    from pacs_node.dispatch import Dispatcher
    from pacs_node.node import Node

    settings.storage.root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    _stop_on_signals(stop)
    dispatcher = Dispatcher(db, settings.storage.root.resolve(), settings.node.ae_title, settings.destination_map(),
                            settings.delivery_policy(), name=f"sender:{os.getpid()}")
    node = Node(settings.receiver(), db, settings.queue_policy(), dispatcher)
    try:
        node.start()
    except OSError as exc:
        _fail(f"cannot listen on {settings.node.bind_address}:{settings.node.port}: {exc.strerror or exc}")
    page = _status_page(settings, db, settings.status.port) if settings.status.port else None
    workers: list[subprocess.Popen[bytes]] = [subprocess.Popen(_worker_command(config))
                                              for _ in range(settings.worker.count)]
    log.info("ainode serving as %s on %s:%d with %d worker(s)", settings.node.ae_title, settings.node.bind_address,
             settings.node.port, len(workers))
    try:
        while not stop.wait(1.0):
            for n, proc in enumerate(workers):
                if proc.poll() is not None:
                    log.warning("worker %d exited with %s; starting another", proc.pid, proc.returncode)
                    workers[n] = subprocess.Popen(_worker_command(config))
    finally:
        for proc in workers:
            proc.terminate()
        if page is not None:
            page.stop()
        node.stop()
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.info("ainode stopped")


def _status_page(settings: Settings, db: Database, port: int) -> StatusServer:
    from ainode.status import StatusServer

    address = settings.status.bind_address
    try:
        page = StatusServer(db, address, port).start()
    except OSError as exc:
        _fail(f"the status page cannot listen on {address}:{port}: {exc.strerror or exc}")
    log.info("status page at %s", page.url)
    return page


@app.command()
def status(config: ConfigOption = None,
           port: Annotated[Optional[int], typer.Option(help="Port (default: status.port, else 8080)")] = None,
           verbose: bool = False) -> None:
    """Serve the read-only status page alone (jobs, events, deliveries; /api/jobs as JSON) until stopped."""
    _logging(verbose)
    with _opened(config) as (settings, db):
        stop = threading.Event()
        _stop_on_signals(stop)
        page = _status_page(settings, db, port or settings.status.port or 8080)
        console.print(f"status page at {page.url}")
        try:
            stop.wait()
        finally:
            page.stop()


@app.command()
def worker(config: ConfigOption = None, verbose: bool = False) -> None:
    """Run one worker: claims jobs from the database and processes them (run several on several machines)."""
    from worker.models.spec import load_spec
    from worker.models.unet import UNetRuntime
    from worker.pipeline import Pipeline, PipelineConfig
    from worker.runner import RunnerConfig, Worker

    _logging(verbose)
    with _opened(config) as (settings, db):
        try:
            runtime = UNetRuntime(load_spec(settings.worker.model), settings.worker.device, settings.worker.threads)
        except ConfigurationError as exc:
            _fail(str(exc))
        w = settings.worker
        pipeline = Pipeline(runtime, PipelineConfig(settings.storage.root.resolve(), settings.output_settings(),
                                                    w.interpolate_missing_slices, w.max_slice_gap_ratio,
                                                    w.merge_frames_of_reference))
        stop = threading.Event()
        _stop_on_signals(stop)
        Worker(db, settings.queue_policy(), pipeline,
               RunnerConfig(tuple(settings.delivery.result_destinations), settings.worker.poll_seconds)).run(stop)


@app.command()
def jobs(config: ConfigOption = None,
         state: Annotated[Optional[str], typer.Option(help="Only jobs in this state")] = None,
         limit: Annotated[int, typer.Option(help="Newest N jobs")] = 50) -> None:
    """Show the newest jobs: patient, series, model, state, attempts, seconds per stage, reason."""
    from ainode.views import jobs_table
    from db import monitor

    with _opened(config) as (_, db):
        console.print(jobs_table(monitor.jobs(db, limit=limit, state=state)))


@app.command()
def job(job_id: Annotated[int, typer.Argument(help="Job id")], config: ConfigOption = None) -> None:
    """Show one job: events, timings, outputs and deliveries, error."""
    from ainode.views import job_view
    from db import monitor

    with _opened(config) as (_, db):
        detail = monitor.job(db, job_id)
    if detail is None:
        _fail(f"there is no job {job_id}")
    console.print(job_view(detail))


@app.command()
def retry(job_id: Annotated[int, typer.Argument(help="Job id")], config: ConfigOption = None) -> None:
    """Queue a finished (succeeded, failed or rejected) job again, with a fresh set of attempts."""
    from db import queue

    with _opened(config) as (settings, db):
        requeued = queue.retry(db, job_id, settings.queue.max_attempts)
    if not requeued:
        _fail(f"job {job_id} does not exist or is still queued or running")
    console.print(f"job {job_id} queued again")


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration (file + AINODE_ environment) and print the effective settings."""
    settings = _settings(config)
    console.print_json(settings.model_dump_json())


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, results and overlay")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the phantom study")] = 7,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results")] = 110.0,
) -> None:
    """Send a generated phantom CT to a local node and show what comes back (SEG, SR, Dice, overlay)."""
    from ainode.demo import run_demo

    _logging()
    code = run_demo(out, seed=seed, timeout=timeout, console=console)
    raise typer.Exit(code)


training_commands.register(app)


def main() -> None:
    app(prog_name="ainode")


if __name__ == "__main__":
    main()
