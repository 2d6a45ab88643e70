"""The migrations build exactly the models' schema, on SQLite and on PostgreSQL."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from conftest import database_url
from db.engine import MIGRATIONS, Database
from db.models import Base

HEAD = max(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrated_schema_equals_the_models(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = Database(database_url(kind, tmp_path, request))
    db.migrate()
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert set(inspect(db.engine).get_table_names()) >= {
        "studies", "series", "instances", "jobs", "job_events", "results", "deliveries", "alembic_version"}
    db.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrating_twice_is_harmless(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = Database(database_url(kind, tmp_path, request))
    db.migrate()
    db.migrate()
    with db.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == HEAD
    db.dispose()
