"""Files under the storage root: where received instances and result objects live, written durably.

Both sides of the node write here (the receiver its instances, the worker its SEG and SR), so the layout
and the one atomic writer are in ``db``, where they meet. A file is complete or absent: written to a
temporary name in the target folder, fsynced, renamed, and the folder fsynced, so a crash never leaves
half a file under its real name and a rename survives a power cut. Paths are relative to the root, so
several machines can mount the same storage at different places.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PARTIAL_PREFIX = ".incoming-"
PARTIAL_SUFFIX = ".part"


class InvalidUID(ValueError):
    pass


def check_uid(value: object, keyword: str) -> str:
    """The UID as a string, or ``InvalidUID`` naming the attribute and the value."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text or len(text) > 64 or not _UID.match(text):
        raise InvalidUID(f"{keyword} {text!r} is not a valid UID")
    return text


def instance_path(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
    """Relative path of a received instance; the arguments must already have passed ``check_uid``."""
    return Path("incoming") / study_instance_uid / series_instance_uid / f"{sop_instance_uid}.dcm"


def result_path(study_instance_uid: str, job_id: int, kind: str, sop_instance_uid: str) -> Path:
    """Relative path of a result object (SEG, SR) a job made."""
    return Path("results") / study_instance_uid / f"job-{job_id}" / f"{kind}-{sop_instance_uid}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, content: bytes | Iterable[bytes] | Callable[[BinaryIO], None]) -> int:
    """Create ``target`` durably; returns its size. ``content`` is the bytes (a received dataset as it came
    off the wire, possibly in chunks) or a function that writes them into the file it is given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                for part in [content] if isinstance(content, bytes) else content:
                    fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return size


@dataclass(frozen=True)
class Watermark:
    """The free space below which the node takes no more data: new associations are refused (transient)
    and C-STOREs answered 0xA700 before anything is written, until space returns."""

    minimum_free_bytes: int = 5 << 30
    minimum_free_fraction: float = 0.05

    def problem(self, root: Path) -> str | None:
        """Why ``root`` has too little space now, or None."""
        try:
            usage = shutil.disk_usage(root if root.exists() else root.parent)
        except OSError as exc:
            return f"the storage root cannot be checked: {exc.strerror or exc}"
        if usage.free < self.minimum_free_bytes or usage.free < self.minimum_free_fraction * usage.total:
            return (f"only {usage.free / 2**30:.2f} GiB ({usage.free / usage.total:.1%}) free on the storage root; "
                    f"the node takes data again above {self.minimum_free_bytes / 2**30:.2f} GiB and "
                    f"{self.minimum_free_fraction:.0%}")
        return None
