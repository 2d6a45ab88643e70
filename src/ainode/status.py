"""The status page over the database: the overview (queue, jobs per state, stage times, failed jobs with
a retry button, deliveries waiting, the newest jobs), each job's page, the same as JSON, Prometheus
metrics at ``/metrics`` and a health check at ``/healthz``. It reads through ``db.monitor`` and
``db.overview`` and writes only through ``db.queue.retry``, so it may run inside ``ainode serve`` or on
any machine that reaches the database.

It shows patient data: without a password (``status.password_file``) it listens on loopback only and
answers only requests addressed to a loopback name; ``/healthz`` is always open, ``/metrics`` is open
unless ``status.metrics_token_file`` is set (see ``ainode.access``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.exc import SQLAlchemyError

from ainode import exporter, pages
from ainode.access import Access
from db import audit, monitor, overview, queue
from db.engine import Database
from db.errors import RejectedInput
from db.models import utcnow
from db.storage import Watermark

log = logging.getLogger(__name__)

STATES = pages.STATES
_JOB = re.compile(r"^/(api/)?jobs/(\d+)$")
_RETRY = re.compile(r"^/jobs/(\d+)/retry$")
_FORM_LIMIT = 4096
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_HEADERS = {  # nothing on the page runs script, so nothing injected could
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat() + "Z"  # the database keeps naive UTC
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_overview(db: Database, state: str | None) -> pages.Overview:
    now = utcnow()
    waiting = overview.delivery_states(db)
    return pages.Overview(
        now=now, depth=overview.queue_depth(db, now),
        states_hour=overview.job_states(db, now - dt.timedelta(hours=1)),
        states_day=overview.job_states(db, now - dt.timedelta(days=1)), states_all=overview.job_states(db),
        stage_times=overview.stage_times(db, now - dt.timedelta(days=1)),
        failed=monitor.jobs(db, limit=20, state=pages.RETRYABLE), waiting=overview.waiting_deliveries(db),
        waiting_count=sum(n for (s, _), n in waiting.items() if s in overview.WAITING),
        recent=monitor.jobs(db, state=state), unrouted=monitor.not_routed(db, limit=10))


class _Handler(BaseHTTPRequestHandler):
    server: StatusServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
        log.debug("status page: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **_HEADERS,
                            **{k.replace("_", "-"): v for k, v in headers.items()}}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, message: str, **headers: str) -> None:
        self._send(status, f"{message}\n".encode(), _TEXT, **headers)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value, default=_json_default).encode(), "application/json")

    def _may_read(self) -> bool:
        """The page's own checks (Host, then credentials); answers the refusal itself."""
        access = self.server.access
        if not access.host_allowed(self.headers.get("Host")):
            self._text(403, "this page has no password and answers only requests for localhost or a loopback "
                            "address (set status.password_file to open it to a network)")
            return False
        if not access.person(self.headers.get("Authorization")):
            self._text(401, "authentication required", WWW_Authenticate='Basic realm="ainode", charset="UTF-8"')
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._metrics()
            return
        if url.path != "/healthz" and not self._may_read():
            return
        query = parse_qs(url.query)
        state = query.get("state", [None])[0]
        try:
            self._route(url.path, state if state in STATES else None, query.get("retried", [""])[0])
        except SQLAlchemyError as exc:
            log.warning("status page: the database cannot be read: %s", exc)
            self._text(503, "the database cannot be read")

    def _metrics(self) -> None:
        access = self.server.access
        if not access.host_allowed(self.headers.get("Host")):
            self._text(403, "this page answers only requests for localhost or a loopback address")
        elif not access.scraper(self.headers.get("Authorization")):
            self._text(401, "a bearer token is required (status.metrics_token_file)",
                       WWW_Authenticate='Bearer realm="ainode metrics"')
        else:
            body, content_type = exporter.exposition(self.server.metrics, self.headers.get("Accept"))
            self._send(200, body, content_type)

    def _route(self, path: str, state: str | None, retried: str) -> None:
        db, token = self.server.database, self.server.access.csrf_token
        if path == "/healthz":
            monitor.jobs(db, limit=1)
            low = self.server.storage_problem()
            self._text(503 if low else 200, f"not taking data: {low}" if low else "ok")
        elif path in ("/", "/index.html"):
            notice = f"Job {int(retried)} queued again." if retried.isdigit() else ""
            if low := self.server.storage_problem():
                notice = f"The node takes no data: {low}. {notice}".strip()
            self._send(200, pages.overview_page(read_overview(db, state), state, token, notice), _HTML)
        elif path == "/audit":
            self._send(200, pages.audit_page(audit.trail(db)), _HTML)
        elif path == "/api/jobs":
            self._json(200, [dataclasses.asdict(row) for row in monitor.jobs(db, state=state)])
        elif match := _JOB.match(path):
            detail = monitor.job(db, int(match.group(2)))
            if detail is None:
                self._text(404, f"there is no job {match.group(2)}")
            elif match.group(1):
                self._json(200, dataclasses.asdict(detail))
            else:
                self._send(200, pages.job_page(detail, token), _HTML)
        else:
            self._text(404, "not found")

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        if not self._may_read():
            return
        match = _RETRY.match(urlsplit(self.path).path)
        if match is None:
            self._text(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _FORM_LIMIT:
            self._text(413 if length > _FORM_LIMIT else 400, "the form must be at most 4096 bytes")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        problem = self.server.access.form_allowed(self.headers, form.get("csrf", [""])[0])
        if problem:
            self._text(403, problem)
            return
        try:
            self._retry(int(match.group(1)))
        except SQLAlchemyError as exc:
            log.warning("status page: the database cannot be written: %s", exc)
            self._text(503, "the database cannot be written")

    def _retry(self, job_id: int) -> None:
        db = self.server.database
        who = f"status-page:{self.server.access.username}@{self.client_address[0]}"
        try:
            requeued = queue.retry(db, job_id, self.server.retry_attempts, by=who)
        except RejectedInput as exc:
            self._text(409, str(exc))
            return
        if requeued:
            log.info("job %d queued again from the status page (request from %s)", job_id, self.client_address[0])
            self._send(303, b"", _TEXT, Location=f"/?retried={job_id}#failed")
            return
        detail = monitor.job(db, job_id)
        if detail is None:
            self._text(404, f"there is no job {job_id}")
        else:
            self._text(409, f"job {job_id} is {detail.row.state}: only a finished job can be queued again")


class StatusServer(ThreadingHTTPServer):
    """The status page on ``address``:``port``; ``start`` serves it from a daemon thread.

    ``retry_attempts``: attempts a retried job gets (``queue.max_attempts``); ``storage_root``: whose free
    space ``/metrics`` reports."""

    daemon_threads = True

    def __init__(self, database: Database, address: str, port: int, access: Access | None = None,
                 storage_root: Path | None = None, retry_attempts: int | None = None,
                 database_timeout: float = 5.0, watermark: Watermark | None = None) -> None:
        """``watermark``: the free space below which the node takes no data, which /healthz and the page
        report for ``storage_root``."""
        self.database = database
        self.access = access or Access()
        self.storage_root = storage_root
        self.watermark = watermark
        self.retry_attempts = retry_attempts
        self.metrics = exporter.registry(exporter.NodeCollector(database, storage_root, database_timeout))
        super().__init__((address, port), _Handler)

    def storage_problem(self) -> str | None:
        """Why the node takes no data now (too little free space), or None."""
        if self.watermark is None or self.storage_root is None:
            return None
        return self.watermark.problem(self.storage_root)

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = host if isinstance(host, str) else host.decode()
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server_port}/"

    def start(self) -> StatusServer:
        threading.Thread(target=self.serve_forever, name="status-page", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
