"""Routing: routes evaluated in order on a settled series' attributes, each naming models, destinations and a
priority; a series no route takes is recorded as not routed with each route's first failing condition;
`ainode route explain` says the same for a stored series or a folder of files; a bad route stops start-up."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ainode.cli import app
from ainode.config import load_settings
from ainode.routing import Route, evaluate
from conftest import PhantomSeries
from db import ingest, monitor, queue
from db.engine import Database
from db.errors import ConfigurationError
from db.models import Job, Series, utcnow
from db.routing import SettledSeries
from worker.models.spec import DEMO_MODEL

CHEST = SettledSeries("1.2.3.1", "CT", "Thorax 1.0 B31f", "CT chest", "Chest routine", "CHEST",
                      ("ORIGINAL", "PRIMARY", "AXIAL"), "SIEMENS", 1.0, 300, "1.2.840.10008.5.1.4.1.1.2", "PACS")
ABDOMEN = SettledSeries("1.2.3.2", "CT", "Abdomen portal venous", "CT abdomen", "Abdomen", "ABDOMEN",
                        ("ORIGINAL", "PRIMARY", "AXIAL"), "GE MEDICAL SYSTEMS", 2.5, 180, "1.2.840.10008.5.1.4.1.1.2")
SCOUT = SettledSeries("1.2.3.3", "CT", "Topogram", "CT chest", "Chest routine", "CHEST",
                      ("ORIGINAL", "PRIMARY", "LOCALIZER"), "SIEMENS", 0.6, 1, "1.2.840.10008.5.1.4.1.1.2")
BRAIN = SettledSeries("1.2.3.4", "MR", "t1_mprage_sag", "MR brain", "t1_mprage", "BRAIN", ("ORIGINAL", "PRIMARY"),
                      "SIEMENS", 1.0, 176, "1.2.840.10008.5.1.4.1.1.4")

ROUTES = [
    Route.build("chest-ct", {"modality": "CT", "body_part_examined": ["CHEST", "LUNG"], "image_type_excludes":
                             ["LOCALIZER"], "slices": [50, 3000], "slice_thickness": [0.5, 3.0]}, ["lung"]),
    Route.build("abdomen-ct", {"modality": "CT", "study_description": "(?i)abdo", "manufacturer": "(?i)^GE"},
                ["organs"], destinations=["archive"], priority=5),
    Route.build("stat-brain", {"modality": "MR", "series_description": "(?i)t1"}, ["tumour"], priority=10,
                stop=False),
    Route.build("brain-research", {"modality": "MR", "calling_ae_title": ["RESEARCH"]}, ["tumour", "research"]),
]


def test_each_series_goes_where_its_first_matching_route_says() -> None:
    assert [(p.model, p.route, p.priority, p.destinations) for p in evaluate(ROUTES, CHEST)[0].jobs] == [
        ("lung", "chest-ct", 0, None)]
    assert [(p.model, p.priority, p.destinations) for p in evaluate(ROUTES, ABDOMEN)[0].jobs] == [
        ("organs", 5, ("archive",))]
    routing, verdicts = evaluate(ROUTES, BRAIN)
    assert [p.model for p in routing.jobs] == ["tumour"], "stop = false goes on, a model is planned once"
    assert [v.takes for v in verdicts] == [False, False, True, False]


def test_a_series_no_route_takes_says_each_routes_first_failing_condition() -> None:
    routing, verdicts = evaluate(ROUTES, SCOUT)
    assert routing.jobs == ()
    assert verdicts[0].why == "the number of slices 1 is outside 50–3000"
    assert "chest-ct: " in routing.reason and "abdomen-ct: StudyDescription 'CT chest' does not match" in \
        routing.reason and "stat-brain: Modality is 'CT'" in routing.reason


@pytest.mark.parametrize(("route", "error"), [
    ('name = "r"\nmodels = ["nowhere"]', "routes[r].models: 'nowhere' is not a configured model"),
    ('name = "r"\nmodels = ["demo"]\ndestinations = ["mars"]', "routes[r].destinations: 'mars'"),
    ('name = "r"\nmodels = ["demo"]\nwhen = { series_description = "(unclosed" }',
     "routes[r].when.series_description: '(unclosed' is not a regular expression"),
    ('name = "r"\nmodels = ["demo"]\nwhen = { modalty = "CT" }', "routes[r].when.modalty: unknown condition"),
    ('name = "r"\nmodels = ["demo"]\nwhen = { slices = 5 }', "routes[r].when.slices: 5 must be [low, high]"),
])
def test_a_bad_route_stops_start_up_naming_the_route_and_the_key(tmp_path: Path, route: str, error: str) -> None:
    config = tmp_path / "ainode.toml"
    config.write_text(f"[[routes]]\n{route}\n")
    with pytest.raises(ConfigurationError, match=re.escape(error)):
        load_settings(config)


def _settled(db: Database, uid: str, modality: str = "CT") -> None:
    t0 = utcnow() - dt.timedelta(minutes=1)
    ingest.record_instance(db, ingest.ReceivedInstance("1.2.3", uid, uid + ".1", "1.2.840.10008.5.1.4.1.1.2",
                                                       "1.2.840.10008.1.2.1", modality, f"incoming/{uid}.dcm", 10,
                                                       "PACS", body_part_examined="CHEST", slice_thickness=1.0),
                           now=t0)
    ingest.release_series(db, {uid: None}, now=t0)


def test_not_routed_series_are_recorded_and_priority_orders_the_queue(database: Database) -> None:
    def route(series: SettledSeries) -> object:
        return evaluate([Route.build("ct", {"modality": "CT"}, ["routine"]),
                         Route.build("stat", {"modality": "MR"}, ["urgent"], priority=10)], series)[0]

    _settled(database, "1.2.3.10", "CT")
    _settled(database, "1.2.3.11", "MR")
    _settled(database, "1.2.3.12", "PT")
    assert len(queue.enqueue_settled(database, queue.QueuePolicy(settle_seconds=0), route)) == 2  # type: ignore[arg-type]
    (unrouted,) = monitor.not_routed(database)
    assert unrouted.series_instance_uid == "1.2.3.12" and "ct: Modality is 'PT'" in unrouted.reason
    with database.read() as session:
        assert session.get(Series, 3).state == "not-routed"  # type: ignore[union-attr]
    loaded = {"routine": queue.Loaded("1", "cpu"), "urgent": queue.Loaded("1", "cpu")}
    first = queue.claim(database, "w", queue.QueuePolicy(), loaded)
    assert first is not None and first.model == "urgent", "the stat route's job first, though it came second"
    with database.read() as session:
        assert session.get(Job, first.id).route == "stat"  # type: ignore[union-attr]


def test_route_explain_for_a_folder_and_for_a_stored_series(tmp_path: Path, small_series: PhantomSeries) -> None:
    config = tmp_path / "ainode.toml"
    config.write_text(f"""[storage]
root = "{tmp_path / 'data'}"
[models.lung]
path = "{DEMO_MODEL}"
[[routes]]
name = "abdomen"
when = {{ body_part_examined = ["ABDOMEN"] }}
models = ["lung"]
[[routes]]
name = "chest"
when = {{ modality = "CT", series_description = "(?i)^phantom" }}
models = ["lung"]
priority = 3
""")
    runner = CliRunner()
    folder = runner.invoke(app, ["route", "explain", str(small_series.paths[0].parent), "--config", str(config)])
    assert folder.exit_code == 0, folder.output
    assert "abdomen: no: BodyPartExamined is 'CHEST', not one of ['ABDOMEN']" in folder.output
    assert "chest: takes it" in folder.output and "job for model lung (priority 3)" in folder.output
    settings = load_settings(config)
    db = Database(settings.database_url)
    db.migrate()
    _settled(db, "1.2.3.99")
    db.dispose()
    stored = runner.invoke(app, ["route", "explain", "1.2.3.99", "--config", str(config)])
    assert stored.exit_code == 0 and "chest: no: SeriesDescription '' does not match" in stored.output
    assert "not routed: no route takes it" in stored.output
    missing = runner.invoke(app, ["route", "explain", "9.9.9", "--config", str(config)])
    assert missing.exit_code == 2 and "there is no stored series 9.9.9" in missing.output


@pytest.mark.slow
def test_a_peer_that_sends_one_series_over_two_associations_gets_its_own_settle_time(
        tmp_path: Path, small_series: PhantomSeries) -> None:
    from ainode.kit import free_port, wait_for
    from conftest import NodeProcess, storescu

    node = NodeProcess(tmp_path / "node", free_port(), workers=0, settle_seconds=0.5,
                       node_extra='[node.peers.scanner]\nae_title = "STORESCU"\nsettle_seconds = 6')
    try:
        node.serve()
        half = len(small_series.paths) // 2
        assert storescu(node.port, small_series.paths[:half]).returncode == 0
        db = node.database()

        def jobs() -> list[Job]:
            with db.read() as session:
                return list(session.query(Job).all())

        def settle() -> float | None:
            with db.read() as session:
                series = session.query(Series).one_or_none()
                return series.settle_seconds if series is not None and series.released_at is not None else None

        assert wait_for(settle, 10, "the first association's end was not recorded") == 6, "the peer's own"
        assert storescu(node.port, small_series.paths[half:]).returncode == 0
        wait_for(jobs, 30, lambda: f"no job after the peer's settle time: {node.log_text()}")
        (job,) = jobs()
        with db.read() as session:
            queued = session.get(Job, job.id).events[0].message  # type: ignore[union-attr]
        assert f"settled with {len(small_series.paths)} instances" in queued
        db.dispose()
    finally:
        node.stop()


def test_a_series_waits_its_peers_settle_time(database: Database) -> None:
    t0 = utcnow() - dt.timedelta(seconds=60)
    ingest.record_instance(database, ingest.ReceivedInstance(
        "1.2.3", "1.2.3.5", "1.2.3.5.1", "1.2", "1.2.840.10008.1.2.1", "CT", "incoming/x.dcm", 10, "SCANNER"), now=t0)
    ingest.release_series(database, {"1.2.3.5": None}, now=t0, settle_seconds=30)

    def route(series: SettledSeries) -> object:
        return evaluate([Route.build("all", {}, ["m"])], series)[0]

    policy = queue.QueuePolicy(settle_seconds=5)
    assert queue.enqueue_settled(database, policy, route, now=t0 + dt.timedelta(seconds=10)) == []  # type: ignore[arg-type]
    assert len(queue.enqueue_settled(database, policy, route, now=t0 + dt.timedelta(seconds=31))) == 1  # type: ignore[arg-type]
