"""What every ``ainode`` command shares: the Typer application, the consoles, and the prologue of loading
the settings, opening and migrating the database, and stopping on signals."""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

from db.errors import ConfigurationError

if TYPE_CHECKING:
    from ainode.config import Settings
    from db.engine import Database
    from worker.models.spec import ModelSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A clinical AI node: receives DICOM series, segments them, returns DICOM-SEG and TID 1500 SR.")
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
log = logging.getLogger("ainode")

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="TOML configuration file (see config/ainode.toml)")
]


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its tracebacks quote peer bytes; ours log one line
    logging.getLogger("alembic").setLevel(logging.WARNING)


def load(config: Optional[Path]) -> Settings:
    """The settings, or the command stops naming every bad key."""
    from ainode.config import load_settings

    try:
        return load_settings(config)
    except ConfigurationError as exc:
        fail(f"invalid configuration\n{exc}")


def database_for(settings: Settings) -> Database:
    from db.engine import Database

    try:
        return Database(settings.database_url, settings.database.busy_timeout_seconds)
    except ConfigurationError as exc:
        fail(str(exc))


@contextmanager
def opened(config: Optional[Path]) -> Iterator[tuple[Settings, Database]]:
    """Settings and the database, migrated; what every command that reads or writes the queue starts with."""
    settings = load(config)
    with migrated(settings) as db:
        yield settings, db


@contextmanager
def migrated(settings: Settings) -> Iterator[Database]:
    """The database of settings already loaded, migrated, and closed afterwards."""
    db = database_for(settings)
    try:
        migrate_patiently(db)
        yield db
    finally:
        db.dispose()


def migrate_patiently(db: Database, patience_seconds: float = 300.0) -> None:
    """Bring the schema up to date, waiting (with backoff) while another process holds the database locked
    or it is briefly unreachable, rather than dying at start-up."""
    from sqlalchemy.exc import OperationalError

    from db.backoff import exponential

    deadline = time.monotonic() + patience_seconds
    for attempt in itertools.count(1):
        try:
            db.migrate()
            return
        except OperationalError as exc:
            if time.monotonic() > deadline:
                fail(f"the database cannot be opened: {str(exc).splitlines()[0]}")
            wait = exponential(0.5, 10.0, attempt).total_seconds()
            log.warning("the database cannot be opened (%s); trying again in %.1f s", str(exc).splitlines()[0], wait)
            time.sleep(wait)


def stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)



def describe_models(settings: Settings) -> dict[str, ModelSpec]:
    """Every configured model's description (cheap: no model is loaded), or start-up refused naming it."""
    from worker.models import registry

    try:
        return {entry.name: registry.describe(entry) for entry in settings.model_entries()}
    except ConfigurationError as exc:
        fail(str(exc))


