"""Several FrameOfReferenceUIDs in one series (a real LIDC CT names one per slice): refused at once with
the count, or, where the configuration allows it and the geometry is one volume, processed in one frame
of reference and recorded on the job. On a real database, through the worker."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from sqlalchemy import select

from conftest import phantom_series
from db.engine import Database
from db.models import Job, JobEvent, Result
from test_worker import POLICY, store
from worker.models.unet import UNetRuntime
from worker.pipeline import Pipeline, PipelineConfig
from worker.runner import RunnerConfig, Worker


def one_frame_of_reference_per_slice(paths: list[Path], every: int = 1) -> None:
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = f"{ds.FrameOfReferenceUID}.{k // every}"
        ds.save_as(path)


def run(db: Database, root: Path, runtime: UNetRuntime, merge: bool) -> Job:
    pipeline = Pipeline(runtime, PipelineConfig(root, merge_frames_of_reference=merge))
    assert Worker(db, POLICY, {"demo": pipeline}, RunnerConfig(("pacs",)), name="test-worker").run_one()
    with db.read() as session:
        return session.scalars(select(Job).order_by(Job.id.desc())).first()


def test_several_frames_of_reference_are_rejected_with_how_many(tmp_path: Path, database: Database,
                                                                runtime: UNetRuntime) -> None:
    series = phantom_series(tmp_path / "src", seed=33, matrix=64, slice_thickness=5.0)
    one_frame_of_reference_per_slice(series.paths)
    store(database, tmp_path / "root", series.paths)
    job = run(database, tmp_path / "root", runtime, merge=False)
    assert (job.state, job.attempts) == ("rejected", 1), "bad input is not retried"
    assert job.error.startswith(f"the {len(series.paths)} instances name {len(series.paths)} different "
                                "FrameOfReferenceUIDs: not one frame of reference")
    assert "worker.merge_frames_of_reference" in job.error


def test_when_allowed_one_volume_is_processed_in_one_frame_of_reference(tmp_path: Path, database: Database,
                                                                         runtime: UNetRuntime) -> None:
    series = phantom_series(tmp_path / "src", seed=34, matrix=96, slice_thickness=5.0)
    one_frame_of_reference_per_slice(series.paths, every=30)
    store(database, tmp_path / "root", series.paths)
    job = run(database, tmp_path / "root", runtime, merge=True)
    assert (job.state, job.error) == ("succeeded", None)
    with database.read() as session:
        notes = {e.stage: e.message for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job.id,
                                                                                   JobEvent.kind == "stage"))}
        paths = {r.kind: tmp_path / "root" / r.path for r in session.scalars(select(Result).where(
            Result.job_id == job.id))}
    chosen = f"{series.identity.frame_of_reference_uid}.0"
    count = -(-len(series.paths) // 30)
    assert f"{count} FrameOfReferenceUIDs in {len(series.paths)} instances: the geometry is one volume, processed " \
           f"in one frame of reference, {chosen}" in notes["assemble"]
    seg = hd.seg.segread(paths["SEG"])
    assert seg.FrameOfReferenceUID == chosen
    assert pydicom.dcmread(series.paths[-1]).FrameOfReferenceUID != chosen, "the stored instances are untouched"


def test_slices_of_several_frames_of_reference_that_are_not_one_volume_stay_refused(
        tmp_path: Path, database: Database, runtime: UNetRuntime) -> None:
    """Allowing a merge does not accept what geometry refuses: two stacks that overlap are not one volume."""
    first = phantom_series(tmp_path / "a", seed=35, matrix=64, slice_thickness=5.0)
    second = phantom_series(tmp_path / "b", seed=35, matrix=64, slice_thickness=5.0)
    for path in second.paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID += ".2"
        ds.FrameOfReferenceUID += ".2"
        ds.save_as(path)
    store(database, tmp_path / "root", first.paths + second.paths)
    job = run(database, tmp_path / "root", runtime, merge=True)
    assert job.state == "rejected" and "several volumes in one series" in job.error, job.error
