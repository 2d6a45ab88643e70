"""A read-only status page over the database: the job table, each job's events, outputs and deliveries,
the same as JSON, and a health check. It only reads (``db.monitor``), so it may run beside ``ainode serve``
or on any machine that reaches the database.

The page shows patient IDs: it listens on 127.0.0.1 unless configured otherwise; put it behind the
hospital's authenticating reverse proxy before opening it to a network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.exc import SQLAlchemyError

from db import monitor
from db.engine import Database
from db.states import JobState

log = logging.getLogger(__name__)

STATES = tuple(JobState)
_JOB = re.compile(r"^/(api/)?jobs/(\d+)$")
_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.succeeded { color: #17803d; } .failed { color: #c0262d; } .rejected { color: #a3269b; }
.running { color: #1d6fb8; } .queued { color: #9a6a00; } .superseded { color: #777; }
"""


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat() + "Z"  # the database keeps naive UTC
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _cell(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str, refresh: bool) -> bytes:
    meta = '<meta http-equiv="refresh" content="5">' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>").encode()


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" if any(columns) else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _supersedes(row: monitor.JobRow) -> str:
    return f'supersedes <a href="/jobs/{row.supersedes}">job {row.supersedes}</a>; ' if row.supersedes else ""


def jobs_page(rows: list[monitor.JobRow], state: str | None) -> bytes:
    filters = " ".join(f'<a href="/?state={s}">{s}</a>' for s in STATES)
    table = _table(
        ("job", "state", "patient", "series", "modality", "instances", "model", "tries", "created", "stages",
         "delivered", "reason"),
        [[f'<a href="/jobs/{row.id}">{row.id}</a>', f'<span class="{row.state}">{row.state}</span>',
          _cell(row.patient_id), _cell(row.series_instance_uid), _cell(row.modality), str(row.instances),
          _cell(row.model or "-"), f"{row.attempts}/{row.max_attempts}", _cell(row.created_at.strftime("%F %T")),
          _cell(row.stages), _cell(row.delivered), _supersedes(row) + _cell(row.error or "")] for row in rows])
    shown = f"{len(rows)} most recent jobs" + (f" in state {html.escape(state)}" if state else "") + " (times in UTC)"
    return _page("ainode jobs", f'<p>{shown}; show <a href="/">all</a> {filters}</p>{table}', refresh=True)


def job_page(detail: monitor.JobDetail) -> bytes:
    row = detail.row
    facts = _table(("", ""), [
        ["state", f'<span class="{row.state}">{row.state}</span>'], ["patient", _cell(row.patient_id)],
        ["study", _cell(row.study_instance_uid)],
        ["series", _cell(f"{row.series_instance_uid} ({row.modality}, {row.instances} instances)")],
        ["model", _cell(row.model or "-")], ["attempts", f"{row.attempts} of {row.max_attempts}"],
        ["supersedes", _supersedes(row).removesuffix("; ") or "-"], ["delivered", _cell(row.delivered)],
        ["created", _cell(row.created_at)], ["finished", _cell(row.finished_at or "-")],
        ["lease", _cell(f"{detail.lease_owner} until {detail.lease_expires_at}" if detail.lease_owner else "-")],
        ["reason", _cell(row.error or "-")]])
    events = _table(("at", "event", "try", "stage", "seconds", "worker", "message"), [
        [_cell(e.at.strftime("%F %T.%f")[:-3]), _cell(e.kind), str(e.attempt), _cell(e.stage or ""),
         f"{e.seconds:.2f}" if e.seconds is not None else "", _cell(e.worker or ""), _cell(e.message)]
        for e in detail.events])
    outputs = _table(("object", "SOP Instance UID", "file"),
                     [[_cell(r.kind), _cell(r.sop_instance_uid), _cell(r.path)] for r in detail.results])
    deliveries = _table(("object", "destination", "state", "tries", "status", "delivered", "error"), [
        [_cell(d.kind), _cell(d.destination), _cell(d.state), str(d.attempts),
         f"0x{d.last_status:04X}" if d.last_status is not None else "", _cell(d.delivered_at or ""),
         _cell(d.error or "")] for d in detail.deliveries])
    body = (f'<p><a href="/">all jobs</a> (times in UTC)</p>{facts}<h2>Events</h2>{events}<h2>Outputs</h2>{outputs}'
            f"<h2>Deliveries</h2>{deliveries}")
    return _page(f"ainode job {row.id}", body, refresh=not JobState(row.state).final)


class _Handler(BaseHTTPRequestHandler):
    server: StatusServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
        log.debug("status page: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value, default=_json_default).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        url = urlsplit(self.path)
        state = parse_qs(url.query).get("state", [None])[0]
        try:
            self._route(url.path, state if state in STATES else None)
        except SQLAlchemyError as exc:
            log.warning("status page: the database cannot be read: %s", exc)
            self._send(503, b"the database cannot be read\n", "text/plain; charset=utf-8")

    def _route(self, path: str, state: str | None) -> None:
        db = self.server.database
        if path == "/healthz":
            monitor.jobs(db, limit=1)
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path in ("/", "/index.html"):
            self._send(200, jobs_page(monitor.jobs(db, state=state), state), "text/html; charset=utf-8")
        elif path == "/api/jobs":
            self._json(200, [dataclasses.asdict(row) for row in monitor.jobs(db, state=state)])
        elif match := _JOB.match(path):
            detail = monitor.job(db, int(match.group(2)))
            if detail is None:
                self._send(404, f"there is no job {match.group(2)}\n".encode(), "text/plain; charset=utf-8")
            elif match.group(1):
                self._json(200, dataclasses.asdict(detail))
            else:
                self._send(200, job_page(detail), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")


class StatusServer(ThreadingHTTPServer):
    """The status page on ``address``:``port``; ``start`` serves it from a daemon thread."""

    daemon_threads = True

    def __init__(self, database: Database, address: str, port: int) -> None:
        self.database = database
        super().__init__((address, port), _Handler)

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.server_port}/"

    def start(self) -> StatusServer:
        threading.Thread(target=self.serve_forever, name="status-page", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
