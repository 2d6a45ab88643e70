"""What a failure while reading input means for the job: the disk or memory failing is retried, a bad
input is rejected, and the message names the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from db.errors import RejectedInput, TransientFailure, reading_input
from worker.assembly.series import assemble


@pytest.mark.parametrize(("failure", "expected"), [
    (OSError(5, "Input/output error"), TransientFailure),
    (MemoryError(), TransientFailure),
    (ValueError("bad VR"), RejectedInput),
])
def test_failures_are_classified_by_what_failed(failure: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected, match="slice 7"):
        with reading_input("slice 7 cannot be read", "slice 7 cannot be decoded"):
            raise failure


def test_an_unreadable_stored_file_is_transient_and_a_broken_one_rejected(tmp_path: Path) -> None:
    (tmp_path / "a-folder.dcm").mkdir()  # opening it fails as the disk would: OSError
    with pytest.raises(TransientFailure, match="a-folder.dcm cannot be opened"):
        assemble([tmp_path / "a-folder.dcm"])
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(RejectedInput, match="noise.dcm cannot be read as DICOM"):
        assemble([tmp_path / "noise.dcm"])
