"""The commands for people who run the node: the queue (jobs, job, retry), the models, retention, the
configuration."""

from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer

from ainode.app import ConfigOption, app, console, describe_models, fail, load, opened
from db.errors import ConfigurationError


@app.command()
def jobs(config: ConfigOption = None,
         state: Annotated[Optional[str], typer.Option(help="Only jobs in this state")] = None,
         limit: Annotated[int, typer.Option(help="Newest N jobs")] = 50) -> None:
    """Show the newest jobs: patient, series, model, state, attempts, seconds per stage, reason."""
    from ainode.views import jobs_table
    from db import monitor

    with opened(config) as (settings, db):
        console.print(jobs_table(monitor.jobs(db, limit=limit, state=state)))
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
        requeued = queue.retry(db, job_id, settings.queue.max_attempts, by=f"operator:{getpass.getuser()}")
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


