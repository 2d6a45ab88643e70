"""Callers known by AE title and address, tested from test hosts in network namespaces of their own (veth
pairs to the tests' namespace): a known AE title from an unknown address, an unknown AE title, and a caller
that must use TLS but does not are refused at association, and each refusal is in the audit trail. The
restricted peers' AE titles are also in ``allowed_calling_ae_titles`` (as "ORTHANC" is by default): the peer
entries alone decide for a title they name."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from ainode.kit import free_port, wait_for
from conftest import DCMTK_ENV, NodeProcess, PhantomSeries, require
from db.models import AuditEvent, Instance

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip", path="/usr/sbin:/usr/bin") is None,
                                 reason="test hosts in network namespaces need root and iproute2")]
NET = f"10.{77 + os.getpid() % 100}.{os.getpid() % 250}"


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    def echo(self, port: int, calling: str) -> bool:
        result = subprocess.run(["ip", "netns", "exec", self.name, require("echoscu"), "-aet", calling, "-aec",
                                 "AINODE", f"{NET}.1", str(port)], env=DCMTK_ENV, capture_output=True, timeout=60)
        return result.returncode == 0

    def store(self, port: int, calling: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, require("storescu"), "-aet", calling, "-aec",
                               "AINODE", f"{NET}.1", str(port), *map(str, paths)], env=DCMTK_ENV,
                              capture_output=True, text=True, timeout=120)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    """Two test hosts on one network, a bridge in the tests' namespace (which has {NET}.1)."""
    tag = os.getpid() % 100000
    bridge = f"ainbr{tag}"
    made: list[Host] = []
    try:
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{NET}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for n, last in enumerate((2, 3)):
            host = Host(f"ainode-test-{tag}-{n}", f"{NET}.{last}")
            here, there = f"ain{tag}h{n}", f"ain{tag}p{n}"
            _ip("netns", "add", host.name)
            made.append(host)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", host.name)
            _ip("link", "set", here, "master", bridge)
            _ip("link", "set", here, "up")
            _ip("netns", "exec", host.name, "ip", "addr", "add", f"{host.address}/24", "dev", there)
            _ip("netns", "exec", host.name, "ip", "link", "set", there, "up")
            _ip("netns", "exec", host.name, "ip", "link", "set", "lo", "up")
        yield made[0], made[1]
    finally:
        for host in made:
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def node(hosts: tuple[Host, Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("peers"), free_port(), workers=0,
                       callers='["STORESCU", "PACS", "SECURE"]',
                       node_extra=f"""[node.peers.pacs]
ae_title = "PACS"
addresses = ["{hosts[0].address}"]
[node.peers.scanners]
ae_title = "CTSCANNER"
addresses = ["{NET}.0/24"]
[node.peers.secure]
ae_title = "SECURE"
require_tls = true""")
    node.config.write_text(node.config.read_text().replace("[node]\n", '[node]\nbind_address = "0.0.0.0"\n', 1))
    try:
        yield node.serve()
    finally:
        node.stop()


def refusals(node: NodeProcess) -> list[AuditEvent]:
    db = node.database()
    try:
        with db.read() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.outcome == "refused")))
    finally:
        db.dispose()


def test_a_peer_is_admitted_from_its_address_only(hosts: tuple[Host, Host], node: NodeProcess) -> None:
    a, b = hosts
    assert a.echo(node.port, "PACS")
    assert not b.echo(node.port, "PACS"), "a known AE title from another address"
    wait_for(lambda: any(e.calling_ae_title == "PACS" and e.address == b.address and
                         f"may not call from {b.address}" in e.detail for e in refusals(node)), 10,
             "the refusal was not audited")


def test_a_peer_may_call_from_anywhere_in_its_network(hosts: tuple[Host, Host], node: NodeProcess) -> None:
    assert all(host.echo(node.port, "CTSCANNER") for host in hosts)


def test_an_unknown_caller_and_a_plain_caller_that_must_use_tls_are_refused_and_audited(
        hosts: tuple[Host, Host], node: NodeProcess) -> None:
    a, _ = hosts
    assert not a.echo(node.port, "INTRUDER")
    assert not a.echo(node.port, "SECURE")
    assert not a.echo(node.port, "INTRUDER"), "a second try from the same caller"
    wait_for(lambda: {e.detail for e in refusals(node)} >= {"calling AE title 'INTRUDER' is not an allowed caller",
                                                           "'SECURE' must call over TLS"}, 10,
             lambda: f"refusals not audited: {[(e.calling_ae_title, e.detail) for e in refusals(node)]}")
    intruder = [e for e in refusals(node) if e.calling_ae_title == "INTRUDER"]
    assert len(intruder) == 1 and intruder[0].count == 2, "refusals of the same caller within a minute share a row"


def stored(node: NodeProcess, series: PhantomSeries) -> int:
    db = node.database()
    try:
        with db.read() as session:
            return len(session.scalars(select(Instance).where(
                Instance.sop_instance_uid.in_(series.sop_instance_uids))).all())
    finally:
        db.dispose()


def test_a_peer_listed_as_an_allowed_caller_too_stores_nothing_from_another_address(
        hosts: tuple[Host, Host], node: NodeProcess, small_series: PhantomSeries) -> None:
    a, b = hosts
    refused = b.store(node.port, "PACS", small_series.paths[:2])
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr, refused
    assert stored(node, small_series) == 0, "stored from an address the peer entry does not list"
    sent = a.store(node.port, "PACS", small_series.paths[:2])
    assert sent.returncode == 0, sent.stderr
    assert stored(node, small_series) == 2, "its own address still stores"
