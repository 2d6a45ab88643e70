"""Connecting to the database and bringing its schema up to date.

SQLite is configured for several processes: WAL, a busy timeout, synchronous=FULL (an instance is
acknowledged only after its row is durable) and ``BEGIN IMMEDIATE`` so that every transaction takes
the write lock up front instead of failing half-way when two writers meet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get("ainode_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory; passed to whoever needs the database, never global."""

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        """``busy_timeout``: how long a write waits for another process's lock (SQLite's busy timeout,
        PostgreSQL's lock_timeout) before it fails; the receiver then answers 0xA700 and the sender retries."""
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigurationError(f"database.url {url!r} is not a database URL") from exc
        options: dict[str, object] = {"future": True}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": busy_timeout, "check_same_thread": False}
        else:
            options["pool_pre_ping"] = True
            if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
                options["connect_args"] = {"options": f"-c lock_timeout={int(busy_timeout * 1000)}"}
        self.url = url
        self.engine = create_engine(parsed, **options)
        if parsed.get_backend_name() == "sqlite":
            _configure_sqlite(self.engine, busy_timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it does not take the write lock, so readers never wait."""
        with self.engine.connect() as connection:
            connection = connection.execution_options(ainode_read_only=True)
            with Session(bind=connection) as session, connection.begin():
                yield session

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration (a no-op when it is already there)."""
        with self.engine.begin() as connection:
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
