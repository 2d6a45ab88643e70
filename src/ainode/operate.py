"""The commands for people who run the node: the queue (jobs, job, retry), the models, retention, the
configuration."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Optional

import typer
from sqlalchemy import select

from ainode.app import ConfigOption, app, console, describe_models, fail, load, migrated, opened
from db.errors import ConfigurationError, RejectedInput
from db.routing import SettledSeries


@app.command()
def jobs(config: ConfigOption = None,
         state: Annotated[Optional[str], typer.Option(help="Only jobs in this state")] = None,
         limit: Annotated[int, typer.Option(help="Newest N jobs")] = 50) -> None:
    """Show the newest jobs: patient, series, model, state, attempts, seconds per stage, reason."""
    from ainode.views import jobs_table, unrouted_table
    from db import monitor

    with opened(config) as (settings, db):
        console.print(jobs_table(monitor.jobs(db, limit=limit, state=state)))
        if state is None and (unrouted := monitor.not_routed(db, limit=10)):
            console.print(unrouted_table(unrouted))
        if low := settings.watermark().problem(settings.storage.root):
            console.print(f"[bold red]The node takes no data:[/] {low}", highlight=False)


@app.command()
def job(job_id: Annotated[int, typer.Argument(help="Job id")], config: ConfigOption = None) -> None:
    """Show one job: events, timings, outputs and deliveries, error."""
    from ainode.views import job_view
    from db import monitor

    with opened(config) as (_, db):
        detail = monitor.job(db, job_id)
    if detail is None:
        fail(f"there is no job {job_id}")
    console.print(job_view(detail))


@app.command()
def retry(job_id: Annotated[int, typer.Argument(help="Job id")], config: ConfigOption = None) -> None:
    """Queue a finished (succeeded, failed or rejected) job again, with a fresh set of attempts."""
    from db import queue

    with opened(config) as (settings, db):
        try:
            requeued = queue.retry(db, job_id, settings.queue.max_attempts, by=f"operator:{getpass.getuser()}")
        except RejectedInput as exc:
            fail(str(exc))
    if not requeued:
        fail(f"job {job_id} does not exist or is still queued or running")
    console.print(f"job {job_id} queued again")


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the configured models: kind, the input each expects, labels with their codes, weights, device."""
    from ainode.views import models_table
    from worker.models.registry import resolved_device

    settings = load(config)
    described = describe_models(settings)
    rows = []
    for entry in settings.model_entries():
        spec = described[entry.name]
        try:
            rows.append((entry.name, entry.kind, resolved_device(entry.device), spec, spec.weights_digest()))
        except ConfigurationError as exc:
            fail(str(exc))
    console.print(models_table(rows))


@app.command()
def export(model: Annotated[str, typer.Option(help="The [models.NAME] to export (kind ainode)")] = "demo",
           format: Annotated[str, typer.Option("--format", help="torchscript or onnx")] = "onnx",
           out: Annotated[Optional[Path], typer.Option(help="Folder to write (default: export-NAME-FORMAT)")] = None,
           config: ConfigOption = None) -> None:
    """Write a model as TorchScript or ONNX with its model.toml beside it (configure it as that kind)."""
    from worker.models import registry
    from worker.models.export import export as write

    entry = next((e for e in load(config).model_entries() if e.name == model), None)
    if entry is None or entry.kind != "ainode" or format not in ("torchscript", "onnx"):
        fail(f"--model {model!r} must name a configured model of kind ainode, --format torchscript or onnx")
    try:
        runtime = registry.load(registry.ModelEntry(entry.name, entry.kind, entry.path, "cpu"))
        written = write(runtime.spec, runtime.network, format, out or Path(f"export-{model}-{format}"))  # type: ignore
    except ConfigurationError as exc:
        fail(str(exc))
    console.print(f"wrote {written.parent}: configure it as kind = {format!r}, path = {str(written)!r}")


@app.command()
def purge(config: ConfigOption = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go")] = False) -> None:
    """Delete the files of series whose retention time has passed (rows stay, marked purged); --dry-run lists
    them and the space they take."""
    from db import audit, retention

    with opened(config) as (settings, db):
        policy = settings.retention_policy() or retention.RetentionPolicy(settings.retention.keep_days,
                                                                          settings.retention.keep_failed_days)
        root = settings.storage.root.resolve()
        items = retention.purgeable(db, root, policy) if dry_run else \
            retention.purge(db, root, policy, audit.actor(f"operator:{getpass.getuser()}"))
    for item in items:
        console.print(f"{item.series_instance_uid}: {len(item.files)} files, {item.size_bytes / 1e6:.1f} MB; "
                      f"{item.reason}", highlight=False)
    total = sum(item.size_bytes for item in items)
    console.print(f"{'would free' if dry_run else 'freed'} {total / 1e6:.1f} MB in {len(items)} series")


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration (file + AINODE_ environment) and print the effective settings."""
    settings = load(config)
    console.print_json(settings.model_dump_json())




route_app = typer.Typer(help="Routing: which models a series goes to.", no_args_is_help=True)
app.add_typer(route_app, name="route")


@route_app.command("explain")
def explain(target: Annotated[str, typer.Argument(help="A stored series' Series Instance UID, or a folder of DICOM "
                                                       "files")],
            config: ConfigOption = None,
            calling: Annotated[str, typer.Option(help="The calling AE title to assume for files")] = "") -> None:
    """For each series: the routes that take it, the first condition that failed for each that does not, and
    the jobs it would get."""
    from ainode.routing import by_modality, evaluate
    from db.models import Series
    from db.routing import SettledSeries

    settings = load(config)
    found: list[SettledSeries] = []
    if Path(target).is_dir():
        found = _series_in_folder(Path(target), calling)
    else:
        with migrated(settings) as db, db.read() as session:
            row = session.scalar(select(Series).where(Series.series_instance_uid == target))
            if row is None:
                fail(f"there is no stored series {target} (or give a folder of DICOM files)")
            found = [SettledSeries.of(row)]
    if not found:
        fail(f"no DICOM series in {target}")
    routes = settings.route_rules()
    for series in found:
        console.print(f"[bold]{series.series_instance_uid}[/] ({series.modality}, {series.instance_count} "
                      f"instances, {series.series_description!r})", highlight=False)
        if routes:
            routing, verdicts = evaluate(routes, series)
            for verdict in verdicts:
                console.print(f"  {verdict.route}: " + ("takes it" if verdict.takes else f"no: {verdict.why}"),
                              highlight=False)
        else:
            routing = by_modality(describe_models(settings))(series)
            console.print("  no routes configured: every model of its modality", highlight=False)
        for plan in routing.jobs:
            where = ", ".join(plan.destinations) if plan.destinations is not None else \
                ", ".join(settings.delivery.result_destinations)
            console.print(f"  → job for model {plan.model} (priority {plan.priority}), results to {where}",
                          highlight=False)
        if not routing.jobs:
            console.print(f"  → not routed: {routing.reason}", highlight=False)


def _series_in_folder(folder: Path, calling: str) -> list[SettledSeries]:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ainode.routing import facts

    first: dict[str, object] = {}
    counts: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        first.setdefault(uid, ds)
        counts[uid] = counts.get(uid, 0) + 1
    return [facts(ds, counts[uid], calling) for uid, ds in first.items()]  # type: ignore[arg-type]
