"""A disk that never fills: below the free-space watermark the node refuses new associations (transient)
and answers C-STOREs 0xA700 before writing anything; /healthz, the status page and `ainode jobs` say so;
receiving resumes by itself when space returns. The refusal is checked on the A-ASSOCIATE-RJ itself (rejected
transient, temporary congestion), the page by fetching it. The storage root is a small tmpfs (needs root)."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from typer.testing import CliRunner

from ainode.cli import app
from ainode.kit import free_port, wait_for
from conftest import NodeProcess, PhantomSeries, echoscu

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    storage = tmp_path / "tmpfs"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(storage)], check=True)
    node = NodeProcess(tmp_path / "node", free_port(), workers=0, storage_root=storage, status_port=free_port(),
                       database_url=f"sqlite:///{tmp_path / 'ainode.db'}", minimum_free_gb=32 / 1024,
                       minimum_free_percent=0)
    try:
        yield node.serve()
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(storage)], check=False)


def health(node: NodeProcess, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.status_port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_below_the_watermark_nothing_is_taken_and_it_says_so_until_space_returns(
        node: NodeProcess, small_series: PhantomSeries) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    open_before = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert open_before.is_established and health(node)[0] == 200
    filler = node.storage_root / "filler"
    filler.write_bytes(b"\0" * (40 << 20))  # 24 MB left, under the 32 MB watermark
    try:
        status = open_before.send_c_store(small_series.paths[0])
        assert status.Status == 0xA700 and "storage nearly full" in status.ErrorComment
        assert not any(node.storage_root.rglob("*.dcm")), "nothing written"
        open_before.release()
        refused = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
        assert refused.is_rejected, "a new association is refused while the disk is low"
        answer = refused.acceptor.primitive  # the A-ASSOCIATE-RJ as it came
        assert answer is not None, "no A-ASSOCIATE-RJ"
        assert (answer.result_str, answer.source_str) == ("Rejected Transient", "Service Provider (Presentation)") \
            and "temporary congestion" in answer.reason_str.lower(), (answer.result_str, answer.reason_str)
        code, text = health(node)
        assert code == 503 and "not taking data" in text and "GiB" in text
        code, page = health(node, "/")
        assert code == 200 and "The node takes no data: only" in page and "GiB" in page, page[:2000]
        listing = CliRunner().invoke(app, ["jobs", "--config", str(node.config)])
        assert "The node takes no data" in listing.output
    finally:
        filler.unlink()
    wait_for(lambda: echoscu(node.port, "AINODE"), 10, "receiving did not resume when space returned")
    assert health(node)[0] == 200
    assert "The node takes no data" not in health(node, "/")[1], "the page's notice goes with the shortage"
    again = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert again.send_c_store(small_series.paths[0]).Status == 0
    again.release()
