"""Instance files under the storage root: paths from validated UIDs only, written atomically.

A file is complete or absent: written to a temporary name in the target folder, fsynced, renamed, and
the folder fsynced, so a crash never leaves half an instance under its real name.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    pass


def check_uid(value: object, keyword: str) -> str:
    """The UID as a string, or ``InvalidUID`` naming the attribute and the value."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text or len(text) > 64 or not _UID.match(text):
        raise InvalidUID(f"{keyword} {text!r} is not a valid UID")
    return text


def instance_path(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
    """Relative path of an instance; the arguments must already have passed ``check_uid``."""
    return Path("incoming") / study_instance_uid / series_instance_uid / f"{sop_instance_uid}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(root: Path, relative: Path, chunks: list[bytes] | bytes) -> int:
    """Write bytes to ``root/relative`` durably; returns the number of bytes written."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = [chunks] if isinstance(chunks, bytes) else chunks
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".part")
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                fh.write(part)
                size += len(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return size
