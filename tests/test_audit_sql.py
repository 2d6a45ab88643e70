"""The README's SQL examples, taken from the README itself, run against a real database (SQLite and
PostgreSQL) holding a real trail: a series received, processed, delivered after a failed attempt and purged;
a refused caller; and another series whose UID starts like the first one's, which must not show up."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from sqlalchemy import text

from db import audit, outbox, retention
from db.engine import Database
from db.models import utcnow
from test_retention import POLICY_KEEP, processed, received

README = Path(__file__).resolve().parents[1] / "README.md"
SERIES = "1.2.840.99"  # the README's example


def readme_queries() -> list[tuple[str, str]]:
    """(comment, statement) for each query of the README's SQL block; a README without them fails here."""
    (block,) = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)
    queries = []
    for chunk in block.strip().split("\n\n"):
        lines = chunk.strip().splitlines()
        comment = " ".join(line[2:].strip() for line in lines if line.startswith("--"))
        statement = "\n".join(line for line in lines if not line.startswith("--")).strip().rstrip(";")
        queries.append((comment, statement))
    assert len(queries) >= 8 and all(statement.upper().startswith("SELECT") for _, statement in queries), queries
    return queries


def a_trail(db: Database, root: Path) -> None:
    received(db, root, SERIES)
    audit.record(db, "receiver:test", "association", "accepted", subject=f"1.2.840.5, {SERIES}",
                 detail="2 instances stored, 0 refused; released", calling_ae_title="STORESCU", address="10.0.0.5",
                 tls=True)
    processed(db, root, succeed=True, deliver=False)
    at_once = outbox.DeliveryPolicy(backoff_seconds=0)
    task = outbox.claim(db, "sender:test", at_once)
    assert task is not None
    outbox.failed(db, task.id, "PACS@10.0.0.9:104 refused or did not answer the association", at_once)
    task = outbox.claim(db, "sender:test", at_once)
    assert task is not None
    outbox.delivered(db, task.id, 0)
    assert retention.purge(db, root, POLICY_KEEP, "retention:test", now=utcnow() + dt.timedelta(days=8))
    received(db, root, f"{SERIES}1")  # another series: its job and association are not the first one's
    audit.record(db, "receiver:test", "association", "accepted", subject=f"{SERIES}1", detail="other",
                 calling_ae_title="STORESCU", address="10.0.0.5", tls=False)
    audit.record_refusal(db, "receiver:test", "INTRUDER", "10.6.6.6", False,
                         "calling AE title 'INTRUDER' is not an allowed caller")


def test_every_readme_query_runs_and_the_audit_ones_find_what_they_promise(tmp_path: Path,
                                                                          database: Database) -> None:
    a_trail(database, tmp_path)
    dialect = "PostgreSQL" if database.engine.dialect.name == "postgresql" else "SQLite"
    other = {"PostgreSQL": "(SQLite)", "SQLite": "(PostgreSQL)"}[dialect]
    answers: dict[str, list[tuple[object, ...]]] = {}
    for comment, statement in readme_queries():
        if comment.endswith(other):
            continue
        with database.read() as session:
            answers[comment] = [tuple(row) for row in session.execute(text(statement))]

    (refused,) = [rows for comment, rows in answers.items() if comment.startswith(("who was refused", "the same"))]
    assert [(r[1], r[2], r[4]) for r in refused] == [("INTRUDER", "10.6.6.6", 1)], refused
    (history,) = [rows for comment, rows in answers.items() if comment.startswith("everything that happened")]
    kinds = [(r[2], r[3]) for r in history]
    assert ("association", "accepted") in kinds and ("purge", "purged") in kinds, kinds
    assert ("job", "claimed") in kinds and ("job", "succeeded") in kinds, kinds
    assert ("delivery", "failed") in kinds and ("delivery", "delivered") in kinds, kinds
    assert all(r[5] != "other" for r in history) and len({r[4] for r in history if r[2] == "job"}) == 1, history
    assert [r[0] for r in history] == sorted(r[0] for r in history), "in order"
