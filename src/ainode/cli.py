"""The ``ainode`` command: wires configuration, the DICOM node, the worker and the database together."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

from db.errors import ConfigurationError

if TYPE_CHECKING:
    from ainode.config import Settings
    from ainode.status import StatusServer
    from db.engine import Database
    from worker.models.spec import ModelSpec

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
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its tracebacks quote peer bytes; ours log one line
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
        return Database(settings.database_url, settings.database.busy_timeout_seconds)
    except ConfigurationError as exc:
        _fail(str(exc))


@contextmanager
def _opened(config: Optional[Path]) -> Iterator[tuple[Settings, Database]]:
    """Settings and the database, migrated; what every command that reads or writes the queue starts with."""
    settings = _settings(config)
    db = _database(settings)
    try:
        _migrate(db)
        yield settings, db
    finally:
        db.dispose()


def _migrate(db: Database, patience_seconds: float = 300.0) -> None:
    """Bring the schema up to date, waiting (with backoff) while another process holds the database locked
    or it is briefly unreachable, rather than dying at start-up."""
    from sqlalchemy.exc import OperationalError

    from db.backoff import exponential

    deadline = time.monotonic() + patience_seconds
    for attempt in itertools.count(1):
        try:
            db.migrate()
            return
        except OperationalError as exc:
            if time.monotonic() > deadline:
                _fail(f"the database cannot be opened: {str(exc).splitlines()[0]}")
            wait = exponential(0.5, 10.0, attempt).total_seconds()
            log.warning("the database cannot be opened (%s); trying again in %.1f s", str(exc).splitlines()[0], wait)
            time.sleep(wait)


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


def _describe_models(settings: Settings) -> dict[str, ModelSpec]:
    """Every configured model's description (cheap: no model is loaded), or start-up refused naming it."""
    from worker.models import registry

    try:
        return {entry.name: registry.describe(entry) for entry in settings.model_entries()}
    except ConfigurationError as exc:
        _fail(str(exc))


def _serve(settings: Settings, db: Database, config: Optional[Path]) -> None:
    from ainode.routing import by_modality
    from ainode.supervise import WorkerPool
    from db.engine import Database
    from pacs_node.dispatch import Dispatcher
    from pacs_node.node import Node

    settings.storage.root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    _stop_on_signals(stop)
    dispatcher = Dispatcher(db, settings.storage.root.resolve(), settings.node.ae_title, settings.destination_map(),
                            settings.delivery_policy(), name=f"sender:{os.getpid()}")
    receive_db = Database(settings.database_url, min(settings.node.database_wait_seconds,
                                                     settings.database.busy_timeout_seconds))
    node = Node(settings.receiver(), db, settings.queue_policy(), dispatcher, by_modality(_describe_models(settings)),
                receive_db)
    try:
        node.start()
    except OSError as exc:
        _fail(f"cannot listen on {settings.node.bind_address}:{settings.node.port}: {exc.strerror or exc}")
    page = _status_page(settings, db, settings.status.port) if settings.status.port else None
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
def worker(config: ConfigOption = None, verbose: bool = False,
           supervisor: Annotated[Optional[int], typer.Option(hidden=True, help="pid of the ainode serve that "
                                                             "started this worker: stop when it is gone")] = None,
           ) -> None:
    """Run one worker: claims jobs from the database and processes them (run several on several machines)."""
    from worker.models import registry
    from worker.pipeline import Pipeline, PipelineConfig
    from worker.runner import RunnerConfig, Worker

    _logging(verbose)
    with _opened(config) as (settings, db):
        pipelines = {}
        for entry in settings.model_entries():
            try:
                runtime = registry.load(entry, settings.worker.threads)
            except ConfigurationError as exc:
                _fail(str(exc))
            pipelines[entry.name] = Pipeline(runtime, PipelineConfig(
                settings.storage.root.resolve(), settings.output_settings(entry.name),
                settings.worker.interpolate_missing_slices))
        stop = threading.Event()
        _stop_on_signals(stop)
        if supervisor is not None:
            from ainode.supervise import watch_parent

            watch_parent(supervisor, stop)
        Worker(db, settings.queue_policy(), pipelines,
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


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the configured models: kind, the input each expects, labels with their codes, weights, device."""
    from ainode.views import models_table
    from worker.models.registry import resolved_device

    settings = _settings(config)
    described = _describe_models(settings)
    rows = []
    for entry in settings.model_entries():
        spec = described[entry.name]
        try:
            rows.append((entry.name, entry.kind, resolved_device(entry.device), spec, spec.weights_digest()))
        except ConfigurationError as exc:
            _fail(str(exc))
    console.print(models_table(rows))


@app.command()
def export(model: Annotated[str, typer.Option(help="The [models.NAME] to export (kind ainode)")] = "demo",
           format: Annotated[str, typer.Option("--format", help="torchscript or onnx")] = "onnx",
           out: Annotated[Optional[Path], typer.Option(help="Folder to write (default: export-NAME-FORMAT)")] = None,
           config: ConfigOption = None) -> None:
    """Write a model as TorchScript or ONNX with its model.toml beside it (configure it as that kind)."""
    from worker.models import registry
    from worker.models.export import export as write

    entry = next((e for e in _settings(config).model_entries() if e.name == model), None)
    if entry is None or entry.kind != "ainode" or format not in ("torchscript", "onnx"):
        _fail(f"--model {model!r} must name a configured model of kind ainode, --format torchscript or onnx")
    try:
        runtime = registry.load(registry.ModelEntry(entry.name, entry.kind, entry.path, "cpu"))
        written = write(runtime.spec, runtime.network, format, out or Path(f"export-{model}-{format}"))  # type: ignore
    except ConfigurationError as exc:
        _fail(str(exc))
    console.print(f"wrote {written.parent}: configure it as kind = {format!r}, path = {str(written)!r}")


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


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the weights")],
    model: Annotated[Optional[Path], typer.Option(help="Model file (model.toml); the demo model by default")] = None,
    cases: Annotated[int, typer.Option(help="Number of generated phantoms to train on")] = 48,
    steps: Annotated[int, typer.Option(help="Optimiser steps")] = 1200,
    batch: Annotated[int, typer.Option(help="Patches per step")] = 2,
    patch: Annotated[int, typer.Option(help="Edge of the cubic training patch, in model voxels")] = 80,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule)")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed for phantoms, sampling and initial weights")] = 0,
) -> None:
    """Train a model's network on generated chest CT phantoms (DiceFocal loss)."""
    from training.train import train as run_training
    from worker.models.spec import load_spec

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        _fail(str(exc))
    run_training(spec, out, cases=cases, steps=steps, batch=batch, patch=(patch, patch, patch), lr=lr,
                 seed=seed, log=console.print)


@app.command()
def evaluate(
    model: Annotated[Optional[Path], typer.Option(help="Model file (model.toml); the demo model by default")] = None,
    cases: Annotated[int, typer.Option(help="Number of fresh phantoms")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation phantoms")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Print per-label Dice of the model against the truth of freshly generated phantoms."""
    from rich.table import Table

    from training.evaluate import evaluate as run_evaluation
    from worker.models.spec import load_spec

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        _fail(str(exc))
    scores = run_evaluation(spec, cases=cases, seed=seed, device=device)
    table = Table(title=f"{spec.name} {spec.version}: Dice on {cases} fresh phantoms")
    table.add_column("label")
    table.add_column("mean", justify="right")
    table.add_column("min", justify="right")
    table.add_column("per case")
    for name, values in scores.items():
        table.add_row(name, f"{sum(values) / len(values):.3f}", f"{min(values):.3f}",
                      " ".join(f"{v:.3f}" for v in values))
    console.print(table)


def main() -> None:
    app(prog_name="ainode")


if __name__ == "__main__":
    main()
