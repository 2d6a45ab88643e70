"""The status page's HTML, built on the server with no script: the overview people watch (queue, jobs
per state, stage times, failed jobs with a retry button, deliveries waiting, the newest jobs) and one
job's page. Every value that came from the database goes through ``html.escape``: patient names,
descriptions, AE titles, UIDs and error messages are whatever a peer sent."""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field

from db import audit, monitor, overview
from db.states import JobState

STATES = tuple(JobState)
RETRYABLE = (JobState.FAILED, JobState.REJECTED)
_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.succeeded { color: #17803d; } .failed { color: #c0262d; } .rejected { color: #a3269b; }
.running { color: #1d6fb8; } .queued { color: #9a6a00; } .superseded { color: #777; }
.summary { display: flex; gap: 1em; flex-wrap: wrap; margin-bottom: 1em; }
.summary div { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.summary b { display: block; font-size: 1.6em; }
.notice { background: #e8f4ea; border: 1px solid #17803d; padding: 0.5em 1em; border-radius: 6px; }
form { margin: 0; }
"""


@dataclass(frozen=True)
class Overview:
    """What the overview shows, read from the database in one request."""

    now: dt.datetime
    depth: overview.QueueDepth
    states_hour: dict[str, int]
    states_day: dict[str, int]
    states_all: dict[str, int]
    stage_times: list[overview.StageTimes]
    failed: list[monitor.JobRow]
    waiting: list[overview.WaitingDelivery]  # the oldest ones
    waiting_count: int
    recent: list[monitor.JobRow]
    unrouted: list[monitor.UnroutedRow] = field(default_factory=list)


def cell(value: object) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, body: str, refresh: bool) -> bytes:
    meta = '<meta http-equiv="refresh" content="10">' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>").encode()


def table(columns: tuple[str, ...], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" if any(columns) else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _state(state: str) -> str:
    return f'<span class="{cell(state)}">{cell(state)}</span>'


def _job_link(job_id: int) -> str:
    return f'<a href="/jobs/{job_id}">{job_id}</a>'


def _ago(now: dt.datetime, then: dt.datetime | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, (now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def retry_form(job_id: int, csrf_token: str) -> str:
    return (f'<form method="post" action="/jobs/{job_id}/retry"><input type="hidden" name="csrf" '
            f'value="{html.escape(csrf_token)}"><button type="submit" id="retry-{job_id}">Retry</button></form>')


def _supersedes(row: monitor.JobRow) -> str:
    return f'supersedes <a href="/jobs/{row.supersedes}">job {row.supersedes}</a>; ' if row.supersedes else ""


def _summary(view: Overview) -> str:
    depth = view.depth
    boxes = [("queued", f"{depth.queued}", f"{depth.due} due now"),
             ("longest wait", _ago(view.now, depth.oldest_due_since).removesuffix(" ago"),
              "for a worker" if depth.oldest_due_since else "nothing waits"),
             ("running", str(view.states_all.get(JobState.RUNNING, 0)), "jobs"),
             ("failed", str(view.states_day.get(JobState.FAILED, 0) + view.states_day.get(JobState.REJECTED, 0)),
              "or rejected, last day"),
             ("deliveries waiting", str(view.waiting_count), "not sent yet")]
    return '<div class="summary">' + "".join(
        f'<div id="summary-{html.escape(key.replace(" ", "-"))}">{html.escape(key)}<b>{html.escape(value)}</b>'
        f"{html.escape(note)}</div>" for key, value, note in boxes) + "</div>"


def jobs_table(rows: list[monitor.JobRow]) -> str:
    return table(
        ("job", "state", "patient", "series", "description", "modality", "instances", "model", "tries", "created",
         "stages", "delivered", "reason"),
        [[_job_link(row.id), _state(row.state), cell(row.patient_id), cell(row.series_instance_uid),
          cell(row.series_description), cell(row.modality), str(row.instances), cell(row.model or "-"),
          f"{row.attempts}/{row.max_attempts}", cell(row.created_at.strftime("%F %T")), cell(row.stages),
          cell(row.delivered), _supersedes(row) + cell(row.reason)] for row in rows], numeric=(6,))


def overview_page(view: Overview, state: str | None, csrf_token: str, notice: str = "") -> bytes:
    states = table(("state", "last hour", "last day", "all"),
                   [[_state(s), str(view.states_hour.get(s, 0)), str(view.states_day.get(s, 0)),
                     str(view.states_all.get(s, 0))] for s in STATES], numeric=(1, 2, 3))
    stages = table(("stage", "attempts", "p50", "p95"),
                   [[cell(t.stage), str(t.count), _seconds(t.p50), _seconds(t.p95)] for t in view.stage_times],
                   numeric=(1, 2, 3)) if view.stage_times else "<p>No stage finished in the last day.</p>"
    failed = table(("job", "state", "patient", "name", "series", "description", "tries", "finished", "reason", ""),
                   [[_job_link(r.id), _state(r.state), cell(r.patient_id), cell(r.patient_name),
                     cell(r.series_instance_uid), cell(r.series_description), f"{r.attempts}/{r.max_attempts}",
                     cell(_ago(view.now, r.finished_at)), cell(r.error or ""), retry_form(r.id, csrf_token)]
                    for r in view.failed]) if view.failed else "<p>None.</p>"
    waiting = table(("job", "patient", "object", "destination", "state", "tries", "last status", "waiting",
                     "next try", "error"),
                    [[_job_link(d.job_id), cell(d.patient_id), cell(d.kind), cell(d.destination), _state(d.state),
                      str(d.attempts), f"0x{d.last_status:04X}" if d.last_status is not None else "",
                      cell(_ago(view.now, d.created_at).removesuffix(" ago")),
                      cell(d.not_before.strftime("%T") if d.not_before > view.now else "now"), cell(d.error or "")]
                     for d in view.waiting]) if view.waiting else "<p>None: every result reached its destinations.</p>"
    filters = " ".join(f'<a href="/?state={s}">{s}</a>' for s in STATES)
    shown = f"{len(view.recent)} most recent jobs" + (f" in state {html.escape(state)}" if state else "")
    notice = f'<p class="notice" id="notice">{html.escape(notice)}</p>' if notice else ""
    body = (_summary(view) + f"<h2>Jobs per state</h2>{states}<h2>Stage times, last day</h2>{stages}"
            + f'<h2 id="failed">Failed and rejected jobs</h2>{notice}{failed}<h2>Deliveries waiting</h2>{waiting}'
            + f'<h2>Jobs</h2><p>{shown} (times in UTC); show <a href="/">all</a> {filters}</p>'
            + jobs_table(view.recent) + _unrouted(view.unrouted) + '<p><a href="/audit">audit trail</a></p>')
    return page("ainode", body, refresh=True)


def _unrouted(rows: list[monitor.UnroutedRow]) -> str:
    if not rows:
        return ""
    return "<h2>Series not routed</h2>" + table(
        ("series", "patient", "modality", "instances", "description", "why"),
        [[cell(r.series_instance_uid), cell(r.patient_id), cell(r.modality), str(r.instances),
          cell(r.series_description), cell(r.reason)] for r in rows], numeric=(3,))


def job_page(detail: monitor.JobDetail, csrf_token: str) -> bytes:
    row = detail.row
    facts = table(("", ""), [
        ["state", _state(row.state)], ["patient", cell(f"{row.patient_id} {row.patient_name}".strip())],
        ["study", cell(row.study_instance_uid)],
        ["series", cell(f"{row.series_instance_uid} ({row.modality}, {row.instances} instances)")],
        ["description", cell(row.series_description)], ["sent by", cell(", ".join(detail.calling_ae_titles) or "-")],
        ["model", cell(row.model or "-")], ["attempts", f"{row.attempts} of {row.max_attempts}"],
        ["supersedes", _supersedes(row).removesuffix("; ") or "-"], ["delivered", cell(row.delivered)],
        ["created", cell(row.created_at)], ["finished", cell(row.finished_at or "-")],
        ["lease", cell(f"{detail.lease_owner} until {detail.lease_expires_at}" if detail.lease_owner else "-")],
        ["reason", cell(row.error or "-")]])
    events = table(("at", "event", "try", "stage", "seconds", "worker", "message"), [
        [cell(e.at.strftime("%F %T.%f")[:-3]), cell(e.kind), str(e.attempt), cell(e.stage or ""),
         f"{e.seconds:.2f}" if e.seconds is not None else "", cell(e.worker or ""), cell(e.message)]
        for e in detail.events])
    outputs = table(("object", "SOP Instance UID", "file"),
                    [[cell(r.kind), cell(r.sop_instance_uid), cell(r.path)] for r in detail.results])
    deliveries = table(("object", "destination", "state", "tries", "status", "delivered", "error"), [
        [cell(d.kind), cell(d.destination), cell(d.state), str(d.attempts),
         f"0x{d.last_status:04X}" if d.last_status is not None else "", cell(d.delivered_at or ""),
         cell(d.error or "")] for d in detail.deliveries])
    retry = retry_form(row.id, csrf_token) if row.state in RETRYABLE else ""
    body = (f'<p><a href="/">all jobs</a> (times in UTC)</p>{facts}{retry}<h2>Events</h2>{events}'
            f"<h2>Outputs</h2>{outputs}<h2>Deliveries</h2>{deliveries}")
    return page(f"ainode job {row.id}", body, refresh=not JobState(row.state).final)


def audit_page(rows: list[audit.AuditRow]) -> bytes:
    """The audit trail: who called from where (TLS or not), what was accepted, refused, delivered, purged,
    and every job transition, newest first."""
    body = table(("at", "kind", "outcome", "calling AE", "address", "TLS", "subject", "times", "actor", "detail"),
                 [[cell(r.at.strftime("%F %T")), cell(r.kind), cell(r.outcome), cell(r.calling_ae_title or ""),
                   cell(r.address or ""), "" if r.tls is None else ("yes" if r.tls else "no"), cell(r.subject or ""),
                   str(r.count), cell(r.actor), cell(r.detail)] for r in rows])
    return page("ainode audit trail", f'<p><a href="/">overview</a> · newest {len(rows)} entries (UTC)</p>{body}',
                refresh=True)
