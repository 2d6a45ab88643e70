"""DICOMweb destinations: results stored with STOW-RS in Orthanc's DICOMweb plugin, beside a DICOM one on
the same route; each delivery stands alone (one destination down does not hold the other), with the same
retries and recorded status."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from ainode.kit import free_port, wait_for
from conftest import DICOMWEB_PLUGIN, NodeProcess, Orthanc, PhantomSeries, StoreSCP, storescu
from db.models import Delivery

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb needed")]


def deliveries(node: NodeProcess) -> dict[str, list[str]]:
    db = node.database()
    try:
        with db.read() as session:
            found: dict[str, list[str]] = {}
            for d in session.scalars(select(Delivery)):
                found.setdefault(d.destination, []).append(d.state)
            return found
    finally:
        db.dispose()


def test_results_go_by_stow_rs_and_by_c_store_each_on_its_own(tmp_path: Path, small_series: PhantomSeries) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    down = StoreSCP(tmp_path / "down")  # never started: a DICOM destination that is down
    node = NodeProcess(tmp_path / "node", down.port, workers=1)
    orthanc.start(node.port)
    text = node.config.read_text().replace("[delivery]\n", '[delivery]\nresult_destinations = ["web", "pacs"]\n')
    node.config.write_text(text + f"""
[destinations.web]
kind = "dicomweb"
url = "http://127.0.0.1:{orthanc.http}/dicom-web"
""")
    try:
        node.serve()
        assert storescu(node.port, small_series.paths).returncode == 0
        study = small_series.identity.study_instance_uid
        wait_for(lambda: orthanc.modalities_in_study(study).get("SR"), 240,
                 lambda: f"nothing arrived by STOW-RS: {deliveries(node)}\n{node.log_text()}")
        assert orthanc.modalities_in_study(study) == {"SEG": 1, "SR": 1}
        found = wait_for(lambda: (d := deliveries(node)).get("web") == ["delivered", "delivered"] and d, 30,
                         lambda: f"deliveries: {deliveries(node)}")
        assert sorted(found["pacs"]) != ["delivered", "delivered"], "the DICOM destination is down"  # type: ignore[index]
        down.start()
        wait_for(lambda: deliveries(node).get("pacs") == ["delivered", "delivered"], 60,
                 lambda: f"the DICOM destination never got its results: {deliveries(node)}")
    finally:
        node.stop()
        orthanc.stop()
        down.stop()


def test_a_dicomweb_destination_that_refuses_is_retried_with_the_http_answer(
        tmp_path: Path, small_series: PhantomSeries) -> None:
    port = free_port()  # nothing listens there
    node = NodeProcess(tmp_path / "node", free_port(), workers=1)
    text = node.config.read_text().replace("[delivery]\n", '[delivery]\nresult_destinations = ["web"]\n')
    node.config.write_text(text + f'\n[destinations.web]\nkind = "dicomweb"\nurl = "http://127.0.0.1:{port}/dicom-web"\n')
    try:
        node.serve()
        assert storescu(node.port, small_series.paths).returncode == 0

        def errors() -> list[str]:
            db = node.database()
            try:
                with db.read() as session:
                    return [d.error or "" for d in session.scalars(select(Delivery)) if d.attempts >= 2]
            finally:
                db.dispose()

        found = wait_for(errors, 240, lambda: f"no retried delivery: {node.log_text()}")
        assert all("did not answer the STOW-RS request" in e for e in found), found  # type: ignore[union-attr]
    finally:
        node.stop()
