"""Writing result files: complete under their final name, or not there at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset


def save_atomic(dataset: Dataset, target: Path) -> None:
    """Write a DICOM file under its final name only once it is complete and on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".result-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            dataset.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
