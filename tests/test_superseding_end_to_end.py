"""Superseding with real peers: a series that grows after its results were delivered is processed again,
and the PACS (DCMTK storescp) receives the new SEG and SR and an IOCM rejection note retracting the first
ones. Marked slow; CI runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from ainode.kit import wait_for
from conftest import NodeProcess, StoreSCP, phantom_series, storescu
from db import monitor

pytestmark = pytest.mark.slow
REJECTED_FOR_QUALITY_REASONS = ("113001", "DCM")


def results_at(pacs: StoreSCP, study_uid: str) -> dict[str, list[str]]:
    """Modality → SOP Instance UIDs of the objects of the study the PACS has stored."""
    found: dict[str, list[str]] = {}
    for path in pacs.files():
        ds = dcmread(path, stop_before_pixels=True)  # storescp answers after writing: complete on disk
        if ds.StudyInstanceUID == study_uid:
            found.setdefault(str(ds.Modality), []).append(str(ds.SOPInstanceUID))
    return found


def all_delivered(node: NodeProcess, series_uid: str, jobs: int) -> bool:
    """``jobs`` jobs of the series succeeded and every delivery of theirs was answered with success."""
    db = node.database()
    try:
        rows = [r for r in monitor.jobs(db) if r.series_instance_uid == series_uid and r.state == "succeeded"]
        details = [monitor.job(db, r.id) for r in rows]
    finally:
        db.dispose()
    return len(rows) == jobs and all(d is not None and d.deliveries and all(x.state == "delivered" for x in
                                                                             d.deliveries) for d in details)


def test_a_series_that_grows_is_processed_again_and_the_first_results_are_retracted(tmp_path: Path) -> None:
    series = phantom_series(tmp_path / "series", seed=31, matrix=96, slice_thickness=5.0)
    n = len(series.paths)
    assert n >= 3 * 16, f"{n} slices: too few for a part of the series that the model takes"
    first_part = series.paths[n // 6:n - n // 6]  # the middle, where the lungs are; the ends come later
    rest = series.paths[:n // 6] + series.paths[n - n // 6:]
    study, series_uid = series.identity.study_instance_uid, series.identity.series_instance_uid
    pacs = StoreSCP(tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "node", pacs.port, settle_seconds=0.5)
    try:
        node.serve()
        sent = storescu(node.port, first_part)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: all_delivered(node, series_uid, jobs=1), 240,
                 lambda: f"the first SEG and SR did not come back:\n{node.log_text()}")
        first = results_at(pacs, study)
        assert sorted(first) == ["SEG", "SR"] and all(len(uids) == 1 for uids in first.values()), first

        sent = storescu(node.port, rest)  # after the settle time: the series grew after its results were made
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: all_delivered(node, series_uid, jobs=2), 240,
                 lambda: f"no second SEG, SR and rejection note: {results_at(pacs, study)}\n{node.log_text()}")
        now = results_at(pacs, study)
        assert (len(now["SEG"]), len(now["SR"]), len(now.get("KO", []))) == (2, 2, 1), now

        (note_path,) = [p for p in pacs.files() if dcmread(p, stop_before_pixels=True).Modality == "KO"]
        note = dcmread(note_path)
        title = note.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == REJECTED_FOR_QUALITY_REASONS
        referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                      for item in note.ContentSequence if "ReferencedSOPSequence" in item}
        assert referenced == {first["SEG"][0], first["SR"][0]}, "the note retracts exactly the first results"
    finally:
        node.stop()
        pacs.stop()
