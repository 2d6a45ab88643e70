"""One base exception; each subclass tells the caller what to do next.

They live in ``db`` because it is the one package every stage shares: a reason raised anywhere ends
up on a job or a delivery row.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class AinodeError(Exception):
    """Base of every error ainode raises on purpose."""


class ConfigurationError(AinodeError):
    """A setting or model file is wrong: stop start-up and name the key."""


class RejectedInput(AinodeError):
    """The input can never be processed as it is (not a volume, wrong modality): do not retry."""


class TransientFailure(AinodeError):
    """Something outside the input failed (disk, memory, database): retry the job later."""


class PeerFailure(AinodeError):
    """A DICOM peer refused or did not answer: retry the delivery later."""


@contextmanager
def reading_input(transient: str, rejected: str) -> Iterator[None]:
    """Classify what goes wrong while reading an input: the disk (``OSError``) or memory failing is
    ``TransientFailure`` (worth another attempt), anything the input itself causes is ``RejectedInput``.
    Each message names the input; the exception's own text follows it."""
    try:
        yield
    except AinodeError:
        raise
    except OSError as exc:
        raise TransientFailure(f"{transient}: {exc.strerror or exc}") from exc
    except MemoryError as exc:
        raise TransientFailure(f"{transient}: out of memory") from exc
    except Exception as exc:
        raise RejectedInput(f"{rejected}: {exc}") from exc


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception as the one readable line a job or delivery row keeps (the traceback goes to the log):
    its type unless it is one of ours, its first line, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or "(no message)"
    line = text if isinstance(exc, AinodeError) else f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 1] + "…"
