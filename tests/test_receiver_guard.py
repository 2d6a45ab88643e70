"""The receiver against hostile peers (raw sockets, DCMTK storescu) as `ainode serve` runs it: room for good
senders whatever slow ones do, deadlines on negotiation and on every PDU, bounded PDUs and datasets, and an
answer (a status, or an abort) for every request. Limits are set small so the tests are quick."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainode.kit import free_port, wait_for
from conftest import DCMTK_ENV, NodeProcess, require
from rawpeer import Peer, associate_rq, ct_instance, encode_dataset, store_pdus
from training.dicom import StudyIdentity

pytestmark = pytest.mark.slow
IDENTITY = StudyIdentity.from_seed(4242)
CT = ct_instance(IDENTITY.study_instance_uid, IDENTITY.series_instance_uid, 1, rows=64)
CT_BYTES = encode_dataset(CT)
LIMITS = """maximum_associations = 64
maximum_negotiating = 64
negotiation_timeout_seconds = 2.0
network_timeout_seconds = 3.0
maximum_dataset_bytes = 67108864
maximum_inflated_bytes = 67108864
maximum_inflight_bytes = 268435456"""


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "node", free_port(), workers=0, node_extra=LIMITS)
    try:
        yield node.serve()
    finally:
        node.stop()


@pytest.fixture()
def default_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """The node as shipped (64 associations, 5 s to negotiate)."""
    node = NodeProcess(tmp_path / "default", free_port(), workers=0)
    try:
        yield node.serve()
    finally:
        node.stop()


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        sock.recv(1 << 16)
        return True  # data now can only be an A-ABORT: the connection is ending
    except TimeoutError:
        return False
    except OSError:
        return True


def stored(node: NodeProcess) -> list[Path]:
    return sorted((node.storage_root / "incoming").rglob("*.dcm")) if (node.storage_root / "incoming").exists() else []


def test_64_concurrent_senders_are_all_persisted(default_node: NodeProcess, tmp_path: Path) -> None:
    node = default_node
    files = []
    for i in range(64):
        path = tmp_path / f"{i}.dcm"
        ct_instance(IDENTITY.study_instance_uid, IDENTITY.series_instance_uid, i + 1, rows=64).save_as(
            path, enforce_file_format=True)
        files.append(path)
    senders = [subprocess.Popen([require("storescu"), "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                                 str(node.port), str(f)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=DCMTK_ENV)
               for f in files]
    failed = [s.communicate(timeout=120)[0] for s in senders if s.wait(120) != 0]
    assert failed == [], f"{len(failed)} of 64 failed: {failed[0][-500:]}"
    assert len(stored(node)) == 64


def test_trickling_connections_are_dropped_and_a_good_sender_is_served_meanwhile(tmp_path: Path) -> None:
    slower = LIMITS.replace("negotiation_timeout_seconds = 2.0", "negotiation_timeout_seconds = 8.0")
    node = NodeProcess(tmp_path / "node", free_port(), workers=0, node_extra=slower)
    try:
        node.serve()
        request = associate_rq()
        tricklers = []
        for _ in range(32):
            s = socket.create_connection(("127.0.0.1", node.port))
            s.sendall(request[:7])  # the header and one byte, then nothing: negotiation never completes
            tricklers.append(s)
        path = tmp_path / "good.dcm"
        CT.save_as(path, enforce_file_format=True)
        good = subprocess.run([require("storescu"), "-aet", "STORESCU", "-aec", "AINODE", "-to", "10", "127.0.0.1",
                               str(node.port), str(path)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
        assert good.returncode == 0, good.stderr
        assert not any(closed(s) for s in tricklers), "the good sender was served only once the slow ones left"
        assert len(stored(node)) == 1
        wait_for(lambda: all(closed(s) for s in tricklers), 8 + 4, "tricklers were not dropped after 8 s")
        for s in tricklers:
            s.close()
    finally:
        node.stop()


def test_a_peer_stalling_inside_a_pdu_is_dropped_after_the_network_timeout(node: NodeProcess) -> None:
    peer = Peer(node.port)
    assert peer.associate().kind == "accept"
    peer.send(struct.pack(">BBL", 4, 0, 1000) + b"\x00" * 10)  # declares 1000 bytes, sends 10
    started = time.monotonic()
    wait_for(lambda: closed(peer.sock), 3 + 2, "a stalled PDU was not dropped")
    assert time.monotonic() - started >= 2.5, "dropped before the network timeout"
    peer.close()


def test_a_pdu_longer_than_negotiated_is_refused_before_it_is_read(node: NodeProcess) -> None:
    before = node.memory()["VmRSS"]
    peer = Peer(node.port)
    assert peer.associate().kind == "accept"
    peer.send(struct.pack(">BBL", 4, 0, 1 << 30) + b"\x00" * (1 << 20))  # declares 1 GiB
    assert peer.response(timeout=1.0).kind in ("abort", "closed")
    assert node.memory()["VmHWM"] - before < 30_000, "the receiver buffered the PDU"  # kB
    peer.close()
    assert Peer(node.port).associate().kind == "accept", "still serving"


def test_a_deflate_bomb_is_refused_within_the_memory_limit(node: NodeProcess) -> None:
    ds = CT.copy()
    del ds.PixelData
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [deflate.compress(encode_dataset(ds) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 256 << 20))]
    body += [deflate.compress(b"\x00" * (1 << 24)) for _ in range(16)] + [deflate.flush()]  # 256 MiB inflated
    peer = Peer(node.port)
    peer.associate()
    context = next(k for k, v in peer.accepted.items() if v.endswith(".99"))  # Deflated Explicit VR LE
    for pdu in store_pdus(b"".join(body), str(CT.SOPInstanceUID), context_id=context):
        peer.send(pdu)
    reply = peer.response(timeout=5.0)
    assert (reply.kind, reply.status) == ("status", 0xA700), reply
    assert "inflates to more than" in reply.comment
    assert node.memory()["VmHWM"] < 400_000, "the bomb inflated in memory"  # kB
    assert stored(node) == []
    peer.close()


@pytest.mark.parametrize("edit", [{"AffectedSOPInstanceUID": ""}, {"AffectedSOPInstanceUID": None},
                                  {"AffectedSOPClassUID": ""}])
def test_a_command_pynetdicom_cannot_serve_is_aborted_within_a_second(node: NodeProcess, edit: dict) -> None:
    peer = Peer(node.port)
    peer.associate()
    for pdu in store_pdus(CT_BYTES, str(CT.SOPInstanceUID), command_edit=edit):
        peer.send(pdu)
    assert peer.response(timeout=1.0).kind in ("abort", "closed")
    wait_for(lambda: "undecodable DIMSE command" in node.log_text(), 2, "the abort was not logged")
    peer.close()


def test_an_undecodable_element_is_refused_naming_it_and_nothing_is_written(node: NodeProcess) -> None:
    i = CT_BYTES.index(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    peer = Peer(node.port)
    peer.associate()
    for pdu in store_pdus(CT_BYTES[:i + 4] + b"IC" + CT_BYTES[i + 6:], str(CT.SOPInstanceUID)):
        peer.send(pdu)
    reply = peer.response(timeout=1.0)
    assert (reply.kind, reply.status) == ("status", 0xC210) and "PatientName" in reply.comment, reply
    assert stored(node) == []
    peer.close()
