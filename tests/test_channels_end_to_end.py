"""A study of four MR series (T1 after gadolinium, T1, T2, FLAIR; each on its own grid, one frame of
reference) through MONAI's ``brats_mri_segmentation`` bundle, unchanged, with local weights of its
architecture, end to end through ``ainode serve`` and DCMTK: the job waits for all four channels, and the
PACS gets one SEG of the bundle's three overlapping regions and one SR, both referencing the four series and
accepted by dciodvfy. A study whose FLAIR never comes is rejected, naming the channel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from ainode.kit import wait_for
from conftest import NodeProcess, StoreSCP, dciodvfy, storescu
from db.models import Job
from db.states import JobState

pytestmark = pytest.mark.slow
pytest.importorskip("nibabel", reason="the bundle extra is not installed (pip install '.[bundle]')")

CONTRASTS = ("T1 POST GD", "T1", "T2", "FLAIR")
ROI = {"inferer#roi_size": [64, 64, 64]}  # the bundle's 240×240×160 window is for a GPU; same network


def brats_node(tmp_path: Path, pacs: StoreSCP, node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    from zoo import make_bundle

    bundle = make_bundle("brats_mri_segmentation", tmp_path / "brats", ROI)
    return node_factory(pacs.port, extra=f"""
[models.brats]
kind = "monai-bundle"
path = "{bundle}"
overrides = {{ "inferer#roi_size" = [64, 64, 64] }}
[models.brats.channels.T1c]
series_description = "(?i)post|gd"
[models.brats.channels.T1]
series_description = "^T1 AX"
[models.brats.channels.T2]
series_description = "^T2"
[models.brats.channels.FLAIR]
series_description = "(?i)flair"
""")


def study(tmp_path: Path):  # type: ignore[no-untyped-def]
    from training.mr import write_mr_study

    return write_mr_study(tmp_path / "study", seed=3, contrasts=CONTRASTS, region="head", matrix=96,
                          slice_thickness=4.0, body_part="HEAD")


def test_four_series_of_a_study_give_one_seg_of_overlapping_regions_referencing_all_four(
        tmp_path: Path, pacs: StoreSCP, node_factory: Callable[..., NodeProcess]) -> None:
    mr = study(tmp_path)
    node = brats_node(tmp_path, pacs, node_factory).serve()
    for contrast in ("T2", "FLAIR", "T1", "T1 POST GD"):  # one association each, the reference grid last
        sent = storescu(node.port, mr.paths[contrast])
        assert sent.returncode == 0, sent.stderr
        if contrast != "T1 POST GD":
            with node.database().read() as session:
                states = list(session.scalars(select(Job.state)))
            assert set(states) <= {JobState.WAITING}, (contrast, states)
    wait_for(node.delivered, 240, lambda: f"no SEG and SR at the PACS; log: {node.log_text()}")
    with node.database().read() as session:
        jobs = list(session.scalars(select(Job)))
    assert [j.state for j in jobs] == [JobState.SUCCEEDED], [(j.state, j.error) for j in jobs]
    files = {dcmread(p).Modality: p for p in pacs.files()}
    seg = dcmread(files["SEG"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Tumor core", "Whole tumor", "Enhancing tumor"]
    referenced = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    assert referenced == set(mr.series_instance_uids.values())
    assert seg.FrameOfReferenceUID == mr.frame_of_reference_uid
    t1c = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in mr.paths["T1 POST GD"]}
    frame_sources = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                     for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_sources <= t1c, "the frames lie on the first channel's slices"
    masks = _masks(seg)
    tc, wt, et = (masks[n] for n in (1, 2, 3))
    assert et.any() and (tc & ~wt).sum() == 0 and (et & ~tc).sum() == 0, "ET ⊂ TC ⊂ WT, as the bundle made them"
    assert (wt & ~tc).any(), "the regions overlap without being equal"
    sr = dcmread(files["SR"])
    assert set(mr.series_instance_uids.values()) <= _series_in(sr)
    for path in (files["SEG"], files["SR"]):
        errors, _ = dciodvfy(path)
        assert errors == [], (path.name, errors)


def _masks(seg) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each segment's mask (segment number → slices × rows × columns), slices in source-instance order."""
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
    out: dict[int, dict[str, np.ndarray]] = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out.setdefault(number, {})[source] = frame
    slices = sorted({s for frames in out.values() for s in frames})
    empty = np.zeros((seg.Rows, seg.Columns), bool)
    return {n: np.stack([frames.get(s, empty) for s in slices]) for n, frames in out.items()}


def _series_in(dataset) -> set[str]:  # type: ignore[no-untyped-def]
    """Every SeriesInstanceUID anywhere in a dataset's nested sequences."""
    found: set[str] = set()

    def walk(ds) -> None:  # type: ignore[no-untyped-def]
        for element in ds:
            if element.keyword == "SeriesInstanceUID" or element.keyword == "ReferencedSeriesInstanceUID":
                found.add(str(element.value))
            elif element.VR == "SQ":
                for item in element.value:
                    walk(item)
    walk(dataset)
    return found


def test_a_study_whose_flair_never_comes_is_rejected_naming_it(
        tmp_path: Path, pacs: StoreSCP, node_factory: Callable[..., NodeProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AINODE_QUEUE__CHANNEL_WAIT_SECONDS", "3")
    mr = study(tmp_path)
    node = brats_node(tmp_path, pacs, node_factory).serve()
    for contrast in ("T1 POST GD", "T1", "T2"):
        assert storescu(node.port, mr.paths[contrast]).returncode == 0

    def rejected() -> Job | None:
        with node.database().read() as session:
            return session.scalar(select(Job).where(Job.state == JobState.REJECTED))

    job = wait_for(rejected, 60, lambda: f"no rejected job; log: {node.log_text()}")
    assert isinstance(job, Job) and job.error is not None and "FLAIR" in job.error, job.error
    assert pacs.files() == [], "nothing is made of a study without all its channels"
