"""The worker on a real database and real files: outcomes and reasons land on the job."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from conftest import PhantomSeries, phantom_series
from db import ingest, queue
from db.engine import Database
from db.models import Delivery, Job, JobEvent, Result, utcnow
from db.routing import Router, Routing, SettledSeries
from db.storage import instance_path
from worker.models.spec import load_spec
from worker.models.unet import UNetRuntime
from worker.pipeline import Pipeline, PipelineConfig
from worker.runner import RunnerConfig, Worker

POLICY = queue.QueuePolicy(settle_seconds=0, max_attempts=2, backoff_seconds=0)


def ROUTE(series: SettledSeries) -> Routing:  # noqa: N802 - a constant of the tests
    return Routing.to("demo")


def store(db: Database, root: Path, paths: list[Path], route: Router = ROUTE,
          policy: queue.QueuePolicy = POLICY) -> None:
    """Put files where the receiver would, record them as it would, and queue the series' jobs."""
    past = utcnow() - dt.timedelta(seconds=10)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / relative)
        ingest.record_instance(db, ingest.ReceivedInstance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, "1.2.840.10008.1.2.1",
            str(ds.Modality), str(relative), path.stat().st_size, "STORESCU"), now=past)
        ingest.release_series(db, {ds.SeriesInstanceUID: None}, now=past)
    queue.enqueue_settled(db, policy, route)


def run(db: Database, root: Path, runtime: UNetRuntime) -> Job:
    pipeline = Pipeline(runtime, PipelineConfig(root))
    assert Worker(db, POLICY, {"demo": pipeline}, RunnerConfig(("pacs",)), name="test-worker").run_one()
    with db.read() as session:
        return session.scalars(select(Job).order_by(Job.id.desc())).first()


def test_a_good_series_succeeds_with_seg_sr_timings_and_deliveries(
        tmp_path: Path, database: Database, small_series: PhantomSeries, runtime: UNetRuntime) -> None:
    store(database, tmp_path, small_series.paths)
    job = run(database, tmp_path, runtime)
    assert (job.state, job.error, job.attempts) == ("succeeded", None, 1)
    with database.read() as session:
        results = session.scalars(select(Result).where(Result.job_id == job.id)).all()
        stages = {e.stage: e.seconds for e in session.scalars(select(JobEvent).where(JobEvent.kind == "stage"))}
        deliveries = session.scalars(select(Delivery)).all()
    assert sorted(r.kind for r in results) == ["SEG", "SR"]
    assert all((tmp_path / r.path).is_file() for r in results)
    assert set(stages) == {"assemble", "segment", "postprocess", "encode"} and all(s > 0 for s in stages.values())
    assert [(d.destination, d.state) for d in deliveries] == [("pacs", "pending"), ("pacs", "pending")]


def test_a_series_with_a_missing_slice_is_rejected_with_the_reason(
        tmp_path: Path, database: Database, runtime: UNetRuntime) -> None:
    series = phantom_series(tmp_path / "src", seed=31, matrix=64, slice_thickness=5.0)
    del series.paths[30]
    store(database, tmp_path / "root", series.paths)
    job = run(database, tmp_path / "root", runtime)
    assert job.state == "rejected" and job.attempts == 1
    assert job.error.startswith("uneven slice spacing: 10.00 mm between")


def test_a_series_of_another_modality_is_rejected(tmp_path: Path, database: Database, runtime: UNetRuntime) -> None:
    series = phantom_series(tmp_path / "src", seed=32, matrix=64, slice_thickness=5.0)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    store(database, tmp_path / "root", series.paths)
    job = run(database, tmp_path / "root", runtime)
    assert job.state == "rejected"
    assert job.error == (f"series {series.identity.series_instance_uid} is MR; "
                         f"model {runtime.spec.name} takes CT")


def test_a_file_gone_from_storage_is_retried_then_fails_with_the_reason(
        tmp_path: Path, database: Database, small_series: PhantomSeries, runtime: UNetRuntime) -> None:
    store(database, tmp_path, small_series.paths)
    shutil.rmtree(tmp_path / "incoming")
    job = run(database, tmp_path, runtime)
    assert (job.state, job.attempts) == ("queued", 1), "storage trouble is worth another attempt"
    assert "cannot be opened: No such file or directory" in job.error
    job = run(database, tmp_path, runtime)
    assert (job.state, job.attempts) == ("failed", 2)
    with database.read() as session:
        kinds = [e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job.id))]
    assert kinds == ["queued", "claimed", "retry", "claimed", "failed"]


@pytest.mark.parametrize("when", ["report", "nothing"])
def test_nothing_found_gives_an_sr_that_says_so_or_nothing_as_configured(
        tmp_path: Path, database: Database, when: str) -> None:
    import highdicom as hd

    from conftest import dciodvfy
    from worker.models.spec import DEMO_MODEL
    from worker.results.identity import OutputSettings

    series = phantom_series(tmp_path / "src", seed=33, matrix=64, slice_thickness=5.0)
    store(database, tmp_path / "root", series.paths)
    # the demo model whose labels must each be over a litre: what it finds is cleaned away
    strict = tmp_path / "model.toml"
    strict.write_text(DEMO_MODEL.read_text()
                      .replace('weights = "weights.pt"', f'weights = "{DEMO_MODEL.with_name("weights.pt")}"')
                      .replace("min_volume_ml = ", "min_volume_ml = 100000.0 # "))
    spec = load_spec(strict)
    pipeline = Pipeline(UNetRuntime(spec, device="cpu"),
                        PipelineConfig(tmp_path / "root", OutputSettings(when_nothing_found=when)))
    assert Worker(database, POLICY, {"demo": pipeline}, RunnerConfig(("pacs",)), name="w").run_one()
    with database.read() as session:
        job = session.scalars(select(Job)).one()
        results = session.scalars(select(Result)).all()
        notes = [e.message for e in session.scalars(select(JobEvent).where(JobEvent.stage == "encode"))]
    assert job.state == "succeeded"
    if when == "nothing":
        assert results == [] and "nothing found: no output" in notes[0]
        return
    (result,) = results
    assert result.kind == "SR" and "nothing found: an SR" in notes[0]
    sr = hd.sr.srread(tmp_path / "root" / result.path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    errors, _ = dciodvfy(tmp_path / "root" / result.path)
    assert errors == [], errors
