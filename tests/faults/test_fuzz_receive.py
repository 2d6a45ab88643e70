"""Fuzzing the receive path over a real socket: hostile datasets and PDUs against `ainode serve`.

Each input must get, within 1 s, a status (dataset inputs) or the connection closed or aborted (PDU inputs,
sent then half-closed); the node must stay alive and serving, write nothing outside its storage root,
answer nothing 0xC211 ("unexpected"), and keep its peak RSS under a bound. Counts per test:
FUZZ_PROFILE=ci (1,000, what `make test` runs), full (10,000: benchmarks/faults.py --fuzz), dev (100).
"""

from __future__ import annotations

import copy
import os
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ainode.kit import free_port
from conftest import NodeProcess
from rawpeer import Peer, associate_rq, ct_instance, encode_dataset, p_data, store_pdus
from training.dicom import StudyIdentity

pytestmark = pytest.mark.slow

COUNTS = {"ci": 1000, "full": 10000, "dev": 100}
for name, n in COUNTS.items():
    settings.register_profile(name, max_examples=n, deadline=None, derandomize=name == "ci",
                              suppress_health_check=list(HealthCheck), database=None)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "ci"))

ANSWER_WITHIN = 1.0
MAX_DATASET = 32 << 20
MAX_INFLIGHT = 128 << 20
RSS_BOUND_MB = 600  # base ~60 MB + in-flight budget + a decoded copy + slack
STATS: Counter[str] = Counter()

IDENTITY = StudyIdentity.from_seed(777)
BASE = ct_instance(IDENTITY.study_instance_uid, IDENTITY.series_instance_uid, 1, rows=16)
BASE_BYTES = encode_dataset(BASE)
HOSTILE_UIDS = ["../../x", "/etc/passwd", "1.2.3/../../../x", "", " ", "1..2", "01.2", "1.2.3\x00",
                "1.2." + "9" * 60, "1.2." + "9" * 61, "9" * 10000, "1.2.\u00e9", "..", ".", "1.2.3\\..\\x",
                "1.2.3\n4"]
VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
       b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
       b"UL", b"UN", b"UR", b"US", b"UT", b"UV", b"IC", b"\x00\x00", b"zz"]
_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


def element_offsets(raw: bytes) -> list[int]:
    """Offsets of the top-level element headers of an Explicit VR Little Endian dataset."""
    out, pos = [], 0
    while pos + 8 <= len(raw):
        out.append(pos)
        vr = raw[pos + 4:pos + 6]
        if vr in _LONG:
            length = struct.unpack("<L", raw[pos + 8:pos + 12])[0]
            pos += 12 + length
        else:
            pos += 8 + struct.unpack("<H", raw[pos + 6:pos + 8])[0]
    return out


OFFSETS = element_offsets(BASE_BYTES)


def bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    ds = ct_instance(IDENTITY.study_instance_uid, IDENTITY.series_instance_uid, 1, rows=16)
    del ds.PixelData
    head = encode_dataset(ds) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, size)
    parts, zero = [c.compress(head)], b"\x00" * (1 << 22)
    for _ in range(size // len(zero)):
        parts.append(c.compress(zero))
    return b"".join(parts) + c.flush()


BOMBS = {n: bomb(n) for n in (MAX_DATASET + (4 << 20), 256 << 20)}


@st.composite
def dataset_inputs(draw: st.DrawFn) -> tuple[str, bytes, bool, dict | None]:
    """(kind, encoded dataset, deflated?, command edit)."""
    kind = draw(st.sampled_from(["bitflip", "truncate", "wrong_vr", "huge_length", "deflate_bomb", "hostile_uid",
                                 "hostile_command_uid", "random", "deflated_garbage", "good"]))
    raw = bytearray(BASE_BYTES)
    if kind == "bitflip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, min(len(raw), 1200) - 1))  # the header, where flips matter
            raw[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "wrong_vr":
        pos = draw(st.sampled_from(OFFSETS))
        raw[pos + 4:pos + 6] = draw(st.sampled_from(VRS))
    elif kind == "huge_length":
        pos = draw(st.sampled_from(OFFSETS))
        if bytes(raw[pos + 4:pos + 6]) in _LONG:
            huge = draw(st.sampled_from([0xFFFFFFFE, 0xFFFFFFFF, 1 << 30, 0x7FFFFFFF]))
            raw[pos + 8:pos + 12] = struct.pack("<L", huge)
        else:
            raw[pos + 6:pos + 8] = struct.pack("<H", draw(st.sampled_from([0xFFFF, 0xFFFE, 0x8000])))
    elif kind == "deflate_bomb":
        return kind, draw(st.sampled_from(list(BOMBS.values()))), True, None
    elif kind == "hostile_uid":
        ds = copy.deepcopy(BASE)
        keyword = draw(st.sampled_from(["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]))
        setattr(ds, keyword, draw(st.sampled_from(HOSTILE_UIDS)))
        raw = bytearray(encode_dataset(ds))
        edit = {"AffectedSOPInstanceUID": str(ds.SOPInstanceUID)} if keyword == "SOPInstanceUID" else None
        return kind, bytes(raw), False, edit
    elif kind == "hostile_command_uid":
        keyword = draw(st.sampled_from(["AffectedSOPInstanceUID", "AffectedSOPClassUID"]))
        return kind, bytes(raw), False, {keyword: draw(st.sampled_from(HOSTILE_UIDS + [None]))}
    elif kind == "random":
        raw = bytearray(draw(st.binary(max_size=2048)))
    elif kind == "deflated_garbage":
        return kind, draw(st.binary(max_size=4096)), True, None
    return kind, bytes(raw), False, None


@st.composite
def pdu_inputs(draw: st.DrawFn) -> tuple[str, bool, bytes]:
    """(kind, associate first?, bytes to send before half-closing)."""
    kind = draw(st.sampled_from(["rq_bitflip", "rq_truncate", "rq_length", "unknown_type", "pdata_length",
                                 "pdata_item_length", "pdata_context", "pdata_control", "random_after_ac",
                                 "release_garbage"]))
    rq = bytearray(associate_rq())
    if kind == "rq_bitflip":
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(rq) - 1))
            rq[i] ^= 1 << draw(st.integers(0, 7))
        return kind, False, bytes(rq)
    if kind == "rq_truncate":
        return kind, False, bytes(rq[:draw(st.integers(0, len(rq) - 1))])
    if kind == "rq_length":
        rq[2:6] = struct.pack(">L", draw(st.sampled_from([0, 1, 68, 0xFFFFFFFF, 1 << 30, len(rq) + 100])))
        return kind, False, bytes(rq)
    if kind == "unknown_type":
        return kind, draw(st.booleans()), bytes([draw(st.sampled_from([0, 8, 9, 0x7F, 0xFF]))]) + bytes(5)
    pdus = store_pdus(BASE_BYTES, str(BASE.SOPInstanceUID))
    if kind == "pdata_length":
        first = bytearray(pdus[0])
        first[2:6] = struct.pack(">L", draw(st.sampled_from([0, 1, 5, 0xFFFFFFFF, 1 << 30, 131072 + 2048])))
        return kind, True, bytes(first)
    if kind == "pdata_item_length":
        first = bytearray(pdus[0])
        first[6:10] = struct.pack(">L", draw(st.sampled_from([0, 1, 2, 0xFFFFFFFF, len(first)])))
        return kind, True, bytes(first)
    if kind == "pdata_context":
        return kind, True, p_data(draw(st.sampled_from([0, 2, 5, 255])), 0x03, pdus[0][12:])
    if kind == "pdata_control":
        return kind, True, p_data(1, draw(st.integers(0, 255)), draw(st.binary(max_size=512)))
    if kind == "random_after_ac":
        return kind, True, draw(st.binary(min_size=1, max_size=4096))
    return kind, True, bytes([5, 0, 0, 0, 0, draw(st.integers(0, 255))]) + draw(st.binary(max_size=16))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    node = NodeProcess(base / "node", free_port(), workers=0, node_extra=f"""maximum_dataset_bytes = {MAX_DATASET}
maximum_inflated_bytes = {MAX_DATASET}
maximum_inflight_bytes = {MAX_INFLIGHT}
network_timeout_seconds = 5.0""")
    node.base = base  # type: ignore[attr-defined]
    try:
        yield node.serve()
    finally:
        alive = node.processes[0].poll() is None
        peak = node.memory()["VmHWM"] // 1024 if alive else -1
        node.stop()
        print(f"\nfuzz summary: {dict(STATS)} peak RSS {peak} MB")


def _check_server(node: NodeProcess) -> None:
    assert node.processes[0].poll() is None, "the node died"
    rss = node.memory()["VmHWM"] // 1024
    assert rss < RSS_BOUND_MB, f"peak RSS {rss} MB"
    outside = [p for p in node.base.rglob("*") if p.is_file()  # type: ignore[attr-defined]
               and node.storage_root not in p.parents and p.suffix not in (".log", ".toml")]
    assert not outside, f"files outside the storage root: {outside[:3]}"


@given(case=dataset_inputs())
def test_datasets_get_a_status_within_1s(server: NodeProcess, case: tuple) -> None:
    kind, data, deflated, edit = case
    peer = Peer(server.port, timeout=5)
    try:
        assert peer.associate().kind == "accept"
        cx = [k for k, v in peer.accepted.items() if v.endswith(".99") == deflated][0]
        sop = (edit or {}).get("AffectedSOPInstanceUID", str(BASE.SOPInstanceUID))
        for pdu in store_pdus(data, sop if sop is not None else "1.2.3", context_id=cx, command_edit=edit):
            peer.send(pdu)
        reply = peer.response(timeout=ANSWER_WITHIN + 4)
    finally:
        peer.close()
    STATS[f"{kind}:{reply.kind}:{hex(reply.status) if reply.status is not None else ''}"] += 1
    assert reply.kind in ("status", "abort", "closed"), f"{kind}: no answer ({reply.kind})"
    assert reply.seconds <= ANSWER_WITHIN, f"{kind}: answered after {reply.seconds:.2f} s"
    assert reply.status != 0xC211, f"{kind}: unexpected error {reply.comment}"
    if kind in ("deflate_bomb", "wrong_vr", "huge_length") and reply.kind == "status":
        assert reply.status != 0x0000 or kind != "deflate_bomb", "a deflate bomb was stored"
    _check_server(server)


@given(case=pdu_inputs())
def test_pdus_end_within_1s(server: NodeProcess, case: tuple) -> None:
    kind, associate_first, data = case
    peer = Peer(server.port, timeout=5)
    try:
        if associate_first:
            assert peer.associate().kind == "accept"
        peer.send(data)
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        t0, outcome = time.monotonic(), "timeout"
        peer.sock.settimeout(ANSWER_WITHIN + 4)
        try:
            while peer.sock.recv(65536):
                pass
            outcome = "closed"
        except TimeoutError:
            pass
        except OSError:
            outcome = "reset"
        took = time.monotonic() - t0
    finally:
        peer.close()
    STATS[f"{kind}:{outcome}"] += 1
    assert outcome != "timeout" and took <= ANSWER_WITHIN, f"{kind}: connection still open after {took:.2f} s"
    _check_server(server)


def test_still_serving_after_fuzzing(server: NodeProcess) -> None:
    peer = Peer(server.port)
    assert peer.associate().kind == "accept"
    for pdu in store_pdus(BASE_BYTES, str(BASE.SOPInstanceUID)):
        peer.send(pdu)
    assert peer.response(timeout=2).status == 0x0000
    peer.release()
