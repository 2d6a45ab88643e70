"""What a killed worker leaves under ``results/``: temporary files of writes it never finished, and complete
SEG, SR or KO files of an attempt that never reached ``queue.complete`` (so no row names them).

Workers on other machines may share the storage and be writing right now, so a file's age says little
(their clocks and the file server's need not agree). The job does: a result file lives in its job's folder
(``results/<study>/job-<id>/``), and until that job has ended (queued, perhaps claimed elsewhere a moment
later, or running) its files are left alone, whoever runs it. A job whose worker died keeps its leftovers
until a start-up after the job has ended. A file that vanishes or cannot be removed (a worker writing as
another user) is skipped and logged, never a reason not to start. Files are listed
before the job states are read, and one replaced since it was listed (a new attempt wrote the same name)
is kept.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from db.engine import Database
from db.models import Job, Result
from db.states import FINAL_JOB_STATES
from db.storage import PARTIAL_PREFIX, PARTIAL_SUFFIX

log = logging.getLogger(__name__)
_JOB_FOLDER = re.compile(r"^job-([0-9]+)$")


@dataclass(frozen=True)
class ResultLeftovers:
    partial_files: list[str]  # temporary files of result writes a kill interrupted, removed
    unfinished_files: list[str]  # result files of attempts that never completed (no row), removed


def _job_of(path: Path) -> int | None:
    match = _JOB_FOLDER.match(path.parent.name)
    return int(match.group(1)) if match else None


def reconcile_results(db: Database, root: Path) -> ResultLeftovers:
    """At start-up: remove the leftovers under ``results/`` of every job that has ended; files outside a
    job folder are not ours to judge and are kept."""
    folder = root / "results"
    if not folder.is_dir():
        return ResultLeftovers([], [])
    listed: dict[Path, int] = {}
    for path in folder.rglob("*"):
        if _job_of(path) is not None:
            try:
                if path.is_file():
                    listed[path] = os.stat(path).st_ino
            except OSError:
                continue  # renamed or removed while listed: a worker elsewhere is writing
    with db.read() as session:
        unfinished_jobs = set(session.scalars(select(Job.id).where(Job.state.not_in(list(FINAL_JOB_STATES)))))
        recorded = set(session.scalars(select(Result.path)))
    partial: list[str] = []
    unfinished: list[str] = []
    for path, inode in listed.items():
        relative = str(path.relative_to(root))
        if _job_of(path) in unfinished_jobs or relative in recorded:
            continue
        try:
            if os.stat(path).st_ino != inode:
                continue  # written again since it was listed: a new attempt's
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("left %s under the results folder: %s", relative, exc)
            continue
        is_partial = path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(PARTIAL_SUFFIX)
        (partial if is_partial else unfinished).append(relative)
    return ResultLeftovers(sorted(partial), sorted(unfinished))
