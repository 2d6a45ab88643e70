"""What reaches the log and the job rows from outside: one escaped, bounded line each, refusals rate-limited."""

from __future__ import annotations

import logging

import pytest

from db.errors import RejectedInput, one_line
from pacs_node.logs import RefusalLog, printable


def test_peer_text_is_one_line_of_printable_ascii() -> None:
    hostile = "EVIL\r\n2026-01-01 00:00:00 INFO ainode faked line\x1b[31m\x00é" + "x" * 500
    text = printable(hostile)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x00" not in text
    assert text.startswith("EVIL\\r\\n2026") and "\\x1b[31m" in text and "\\xe9" in text
    assert len(text) == 200 and text.endswith("…")


def test_errors_are_stored_as_one_readable_line() -> None:
    try:
        raise RuntimeError("first line\nTraceback (most recent call last):\n  File x")
    except RuntimeError as exc:
        assert one_line(exc) == "RuntimeError: first line Traceback (most recent call last): File x"
    assert one_line(RejectedInput("missing slice at z=-120.0 mm")) == "missing slice at z=-120.0 mm"
    assert len(one_line(ValueError("v" * 2000))) == 500


def test_refusals_are_rate_limited_and_what_was_held_back_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.refusals")
    refusals = RefusalLog(logger, burst=3, window=60.0)  # no window ends by itself
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for n in range(50):
            refusals.refused("FUZZER", f"bad dataset {n}\nwith a second line")
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"refused an instance from FUZZER: bad dataset {n}\\nwith a second line" for n in range(3)]
        caplog.clear()
        refusals._started -= 61.0  # the window has passed
        refusals.refused("FUZZER", "one more")
        assert [r.getMessage() for r in caplog.records] == [
            "47 more refusals in the last 61 s were not logged one by one",
            "refused an instance from FUZZER: one more"]


def test_a_flood_of_errors_is_rate_limited_at_its_own_level(caplog: pytest.LogCaptureFixture) -> None:
    """A full disk or a locked database meets every instance of every sender: one error line each, bounded."""
    logger = logging.getLogger("test.failures")
    failures = RefusalLog(logger, burst=2, window=60.0, level=logging.ERROR, what="errors")
    with caplog.at_level(logging.WARNING, logger="test.failures"):
        for n in range(10):
            failures.line(f"cannot write incoming/{n}.dcm: [Errno 28] No space left on device")
        failures._started -= 61.0  # the window has passed
        failures.line("database unavailable: locked")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "cannot write incoming/0.dcm: [Errno 28] No space left on device"),
        (logging.ERROR, "cannot write incoming/1.dcm: [Errno 28] No space left on device"),
        (logging.ERROR, "8 more errors in the last 61 s were not logged one by one"),
        (logging.ERROR, "database unavailable: locked")]
