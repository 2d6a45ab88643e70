"""Orthanc (Debian's, with its DICOMweb plugin) as the real PACS: it sends a study to ainode through its
REST API, and the SEG and SR come back into the same study. Re-sending the study makes no duplicates."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainode.demo import wait_for
from conftest import DCMTK_ENV, NodeProcess, PhantomSeries, free_port, require
from db import monitor

pytestmark = pytest.mark.slow
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http = free_port()
        self.dicom = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, node_port: int) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ainode-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.http, "DicomPort": self.dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {"ainode": ["AINODE", "127.0.0.1", node_port]},
            "DicomCheckCalledAet": False, "StableAge": 1,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([require("Orthanc"), str(self.folder / "orthanc.json")], env=DCMTK_ENV,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 60, lambda: f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
        return self

    def _up(self) -> bool:
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read() or b"null")

    def modalities_in_study(self, study_uid: str) -> dict[str, int]:
        """Modality → number of instances, for every series of the study Orthanc holds."""
        found = self.post("/tools/find", json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
                          .encode(), "application/json")
        if not found:
            return {}
        counts: dict[str, int] = {}
        for series_id in self.get(f"/studies/{found[0]}")["Series"]:  # type: ignore[index]
            series = self.get(f"/series/{series_id}")
            modality = series["MainDicomTags"].get("Modality", "?")  # type: ignore[index]
            counts[modality] = counts.get(modality, 0) + len(series["Instances"])  # type: ignore[index]
        return counts

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture()
def orthanc_and_node(tmp_path: Path, node_factory) -> Iterator[tuple[Orthanc, NodeProcess]]:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc")
    node = node_factory(orthanc.dicom, callers='["ORTHANC", "STORESCU"]', pacs_ae="ORTHANC", settle_seconds=1.0)
    orthanc.start(node.port)
    node.serve()
    yield orthanc, node
    orthanc.stop()


def test_orthanc_sends_a_study_and_gets_seg_and_sr_back_once(
        orthanc_and_node: tuple[Orthanc, NodeProcess], small_series: PhantomSeries) -> None:
    orthanc, node = orthanc_and_node
    for path in small_series.paths:
        orthanc.post("/instances", path.read_bytes())
    study_uid = small_series.identity.study_instance_uid
    study_id = orthanc.post("/tools/lookup", study_uid.encode(), "text/plain")[0]["ID"]  # type: ignore[index]

    orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")
    wait_for(lambda: orthanc.modalities_in_study(study_uid).get("SR"), 240,
             lambda: f"no results in Orthanc: {orthanc.modalities_in_study(study_uid)}\n{node.log_text()}")
    assert orthanc.modalities_in_study(study_uid) == {"CT": len(small_series.paths), "SEG": 1, "SR": 1}

    series = orthanc.get(f"/studies/{study_id}")["Series"]  # type: ignore[index]
    assert len(series) == 3, "the SEG and SR are series of the source study"
    if DICOMWEB_PLUGIN.exists():
        qido = orthanc.get(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
        assert len(qido) == 1  # type: ignore[arg-type]

    orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")  # the same study again
    db = node.database()
    try:
        first = [row for row in monitor.jobs(db) if row.series_instance_uid == small_series.identity.series_instance_uid]
        assert len(first) == 1 and first[0].state == "succeeded"
        # the re-sent instances are known: nothing new arrived, so the series does not settle into a new job
        wait_for(lambda: "already stored" in node.log_text(), 30, "the re-sent instances were not recognised")
        assert len([r for r in monitor.jobs(db) if r.series_instance_uid == first[0].series_instance_uid]) == 1
    finally:
        db.dispose()
    assert orthanc.modalities_in_study(study_uid) == {"CT": len(small_series.paths), "SEG": 1, "SR": 1}
