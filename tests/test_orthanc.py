"""Orthanc (Debian's, with its DICOMweb plugin) as the real PACS: it sends a study to ainode through its
REST API, and the SEG and SR come back into the same study. Re-sending the study makes no duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ainode.kit import wait_for
from conftest import DICOMWEB_PLUGIN, NodeProcess, Orthanc, PhantomSeries
from db import monitor

pytestmark = pytest.mark.slow


@pytest.fixture()
def orthanc_and_node(tmp_path: Path, node_factory) -> Iterator[tuple[Orthanc, NodeProcess]]:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc")
    node = node_factory(orthanc.dicom, callers='["ORTHANC", "STORESCU"]', pacs_ae="ORTHANC", settle_seconds=1.0)
    try:
        orthanc.start(node.port)
        node.serve()
        yield orthanc, node
    finally:
        orthanc.stop()


def test_orthanc_sends_a_study_and_gets_seg_and_sr_back_once(
        orthanc_and_node: tuple[Orthanc, NodeProcess], small_series: PhantomSeries) -> None:
    orthanc, node = orthanc_and_node
    study_uid = small_series.identity.study_instance_uid
    study_id = orthanc.upload(small_series.paths, study_uid)

    orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")
    orthanc.wait_for_results(study_uid, node)
    assert orthanc.modalities_in_study(study_uid) == {"CT": len(small_series.paths), "SEG": 1, "SR": 1}

    series = orthanc.get(f"/studies/{study_id}")["Series"]  # type: ignore[index]
    assert len(series) == 3, "the SEG and SR are series of the source study"
    if DICOMWEB_PLUGIN.exists():
        qido = orthanc.get(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
        assert len(qido) == 1  # type: ignore[arg-type]

    orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")  # the same study again
    db = node.database()
    try:
        series_uid = small_series.identity.series_instance_uid
        first = [row for row in monitor.jobs(db) if row.series_instance_uid == series_uid]
        assert len(first) == 1 and first[0].state == "succeeded"
        # the re-sent instances are known: nothing new arrived, so the series does not settle into a new job
        wait_for(lambda: "already stored" in node.log_text(), 30, "the re-sent instances were not recognised")
        assert len([r for r in monitor.jobs(db) if r.series_instance_uid == first[0].series_instance_uid]) == 1
    finally:
        db.dispose()
    assert orthanc.modalities_in_study(study_uid) == {"CT": len(small_series.paths), "SEG": 1, "SR": 1}
