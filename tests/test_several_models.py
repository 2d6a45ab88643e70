"""Several models in one node, end to end through ``ainode serve``: the same series through the demo model and
its ONNX export gives two SEGs and two SRs, each its own series, each dciodvfy-clean, each delivered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from ainode.kit import wait_for
from conftest import NodeProcess, PhantomSeries, StoreSCP, dciodvfy, storescu
from db import monitor

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")


def test_one_series_through_two_models_gives_two_segs_and_two_srs_each_delivered_once(
        tmp_path: Path, pacs: StoreSCP, node_factory: Callable[..., NodeProcess], small_series: PhantomSeries) -> None:
    from worker.models.export import export
    from worker.models.spec import load_spec
    from worker.models.unet import UNetRuntime

    demo = UNetRuntime(load_spec(), device="cpu")
    onnx_model = export(demo.spec, demo.network, "onnx", tmp_path / "onnx")
    node = node_factory(pacs.port, extra=f"""
[models.demo]
kind = "ainode"
[models.lungs-onnx]
kind = "onnx"
path = "{onnx_model}"
seg_series_number = 911
sr_series_number = 912
seg_series_description = "lungs (ONNX)"
""").serve()
    sent = storescu(node.port, small_series.paths)
    assert sent.returncode == 0, sent.stderr

    def finished() -> list[monitor.JobRow] | None:
        db = node.database()
        try:
            rows = [r for r in monitor.jobs(db) if r.series_instance_uid == small_series.identity.series_instance_uid]
            details = [monitor.job(db, r.id) for r in rows]
        finally:
            db.dispose()
        done = len(rows) == 2 and all(r.state == "succeeded" for r in rows) and all(
            d is not None and len(d.deliveries) == 2 and all(x.state == "delivered" for x in d.deliveries)
            for d in details)
        return rows if done else None

    rows = wait_for(finished, 300, lambda: f"both models' results did not arrive\n{node.log_text()}")
    assert sorted(r.model for r in rows) == ["demo", "lungs-onnx"]
    study = small_series.identity.study_instance_uid
    received = [dcmread(p, stop_before_pixels=True) for p in pacs.files()]
    ours = [ds for ds in received if ds.StudyInstanceUID == study]
    assert len(ours) == 4 and len({ds.SOPInstanceUID for ds in ours}) == 4, "each result is delivered once"
    series = {(str(ds.Modality), int(ds.SeriesNumber)) for ds in ours}
    assert series == {("SEG", 901), ("SR", 902), ("SEG", 911), ("SR", 912)}
    assert len({ds.SeriesInstanceUID for ds in ours}) == 4
    weights = {int(ds.SeriesNumber): {v for e in ds.ContributingEquipmentSequence
                                      for v in e.get("SoftwareVersions", []) if str(v).startswith("weights")}
               for ds in ours}
    assert len(weights[901]) == len(weights[911]) == 1 and weights[901] != weights[911]  # each its own file
    assert weights[901] == weights[902] and weights[911] == weights[912]
    for path in pacs.files():
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors + warnings)
