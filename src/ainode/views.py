"""Rich tables of the queue, for ``ainode jobs``, ``ainode job`` and the demo."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from db.monitor import JobDetail, JobRow, UnroutedRow
from db.states import JobState
from worker.models.spec import ModelSpec

STATE_STYLE: dict[str, str] = {JobState.SUCCEEDED: "green", JobState.FAILED: "red", JobState.REJECTED: "magenta",
                               JobState.RUNNING: "cyan", JobState.QUEUED: "yellow", JobState.SUPERSEDED: "dim",
                               JobState.WAITING: "blue"}


def jobs_table(rows: list[JobRow]) -> Table:
    table = Table(title="ainode jobs", expand=False)
    for column in ("id", "state", "patient", "series", "mod", "inst", "model", "tries", "stages", "delivered",
                   "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id), Text(row.state, style=STATE_STYLE.get(row.state, "")), row.patient_id,
            "…" + row.series_instance_uid[-12:], row.modality, str(row.instances), row.model or "-",
            f"{row.attempts}/{row.max_attempts}", row.stages, row.delivered,
            (f"supersedes job {row.supersedes}; " if row.supersedes else "") + row.reason,
        )
    return table


def job_view(detail: JobDetail) -> Group:
    row = detail.row
    head = Table.grid(padding=(0, 2))
    for key, value in (
        ("job", str(row.id)), ("state", row.state), ("patient", row.patient_id),
        ("study", row.study_instance_uid), ("series", f"{row.series_instance_uid} ({row.modality}, "
                                                     f"{row.instances} instances)"),
        ("model", row.model or "-"), ("attempts", f"{row.attempts} of {row.max_attempts}"),
        ("created", str(row.created_at)), ("finished", str(row.finished_at or "-")),
        ("lease", f"{detail.lease_owner} until {detail.lease_expires_at}" if detail.lease_owner else "-"),
        ("supersedes", f"job {row.supersedes}" if row.supersedes else "-"),
        ("stages", row.stages or "-"), ("delivered", row.delivered), ("error", row.reason or "-"),
    ):
        head.add_row(Text(key, style="bold"), value)
    events = Table(title="events")
    for column in ("at", "event", "try", "stage", "seconds", "worker", "message"):
        events.add_column(column, overflow="fold")
    for e in detail.events:
        events.add_row(e.at.strftime("%H:%M:%S.%f")[:-3], e.kind, str(e.attempt), e.stage or "",
                       f"{e.seconds:.2f}" if e.seconds is not None else "", e.worker or "", e.message)
    outputs = Table(title="outputs and deliveries")
    for column in ("object", "SOP Instance UID / destination", "state", "tries", "status", "error"):
        outputs.add_column(column, overflow="fold")
    for r in detail.results:
        outputs.add_row(r.kind, r.sop_instance_uid, "", "", "", r.path)
    for d in detail.deliveries:
        outputs.add_row(f"→ {d.kind}", d.destination, d.state, str(d.attempts),
                        f"0x{d.last_status:04X}" if d.last_status is not None else "", d.error or "")
    return Group(head, events, outputs)


def models_table(models: list[tuple[str, str, str, ModelSpec, str]]) -> Table:
    """``ainode models``: (name, kind, device, description, weights digest) of each configured model."""
    table = Table(title="ainode models", expand=False)
    for column in ("name", "kind", "model", "input", "labels (code)", "weights sha256", "device"):
        table.add_column(column, overflow="fold")
    for name, kind, device, spec, digest in models:
        channels = ", ".join(spec.channels) if spec.channels else "1 channel"
        spacing = f", {'x'.join(f'{v:g}' for v in spec.spacing)} mm" if spec.spacing else ""
        labels = "\n".join(f"{label.value} {label.name} ({label.type.scheme} {label.type.value} "
                           f"{label.type.meaning})" for label in spec.labels)
        table.add_row(name, kind, f"{spec.name} {spec.version}", f"{spec.modality}, {channels}{spacing}, "
                      f"≥ {spec.min_slices} slices", labels, digest[:16] + "…", device)
    return table


def unrouted_table(rows: list[UnroutedRow]) -> Table:
    """Series no route took, and why (each route's first failing condition)."""
    table = Table(title="series not routed", expand=False)
    for column in ("series", "patient", "mod", "inst", "description", "why"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row("…" + row.series_instance_uid[-12:], row.patient_id, row.modality, str(row.instances),
                      row.series_description, row.reason)
    return table
