"""DICOM TLS with DCMTK's tools, in both directions, with certificates the tests make (openssl): accepted
with the right authority, refused with an untrusted certificate, a wrong authority, no client certificate
where one is required, and TLS 1.0/1.1; every refusal in the audit trail."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from ainode.kit import free_port, wait_for
from conftest import DCMTK_ENV, NodeProcess, PhantomSeries, StoreSCP, require, storescu
from db import queue
from db.models import AuditEvent, Delivery, Instance
from db.storage import result_path, write_atomic
from test_queue import MODELS, POLICY, settled_job

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class PKI:
    folder: Path

    def __getitem__(self, name: str) -> str:
        return str(self.folder / name)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _authority(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", "-days", "2", cwd=folder)


def _certificate(folder: Path, name: str, authority: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.crt", "-CAkey", f"{authority}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A hospital authority (ca) that signed the node, the PACS and a modality; another one (rogue) that
    signed an intruder."""
    folder = tmp_path_factory.mktemp("pki")
    for authority in ("ca", "rogue"):
        _authority(folder, authority)
    for name, authority in (("node", "ca"), ("pacs", "ca"), ("modality", "ca"), ("intruder", "rogue")):
        _certificate(folder, name, authority)
    return PKI(folder)


@pytest.fixture()
def node(tmp_path: Path, pki: PKI) -> Iterator[NodeProcess]:
    tls = free_port()
    node = NodeProcess(tmp_path / "node", free_port(), workers=0, callers='["STORESCU", "MODALITY"]',
                       node_extra=f"""tls_port = {tls}
[node.tls]
certificate = "{pki['node.crt']}"
private_key = "{pki['node.key']}"
ca_certificates = "{pki['ca.crt']}"
require_client_certificate = true
[node.peers.modality]
ae_title = "MODALITY"
require_tls = true""")
    node.tls_port = tls  # type: ignore[attr-defined]
    try:
        yield node.serve()
    finally:
        node.stop()


def tls_echo(port: int, key: str | None, cert: str | None, ca: str) -> subprocess.CompletedProcess[str]:
    identity = ["+tls", key, cert] if key and cert else ["+tla"]
    return subprocess.run([require("echoscu"), "-aet", "STORESCU", "-aec", "AINODE", *identity, "+cf", ca,
                           "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def audit(node: NodeProcess) -> list[AuditEvent]:
    db = node.database()
    try:
        with db.read() as session:
            return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    finally:
        db.dispose()


def test_a_modality_with_a_certificate_of_the_hospital_is_served_over_tls(
        node: NodeProcess, pki: PKI, small_series: PhantomSeries) -> None:
    port = node.tls_port  # type: ignore[attr-defined]
    assert tls_echo(port, pki["modality.key"], pki["modality.crt"], pki["ca.crt"]).returncode == 0
    sent = subprocess.run([require("storescu"), "-aet", "STORESCU", "-aec", "AINODE", "+tls", pki["modality.key"],
                           pki["modality.crt"], "+cf", pki["ca.crt"], "127.0.0.1", str(port),
                           *map(str, small_series.paths[:3])], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=120)
    assert sent.returncode == 0, sent.stderr
    db = node.database()
    with db.read() as session:
        assert len(session.scalars(select(Instance)).all()) == 3
    db.dispose()
    wait_for(lambda: any(e.outcome == "accepted" and e.tls and "3 instances stored" in e.detail
                         for e in audit(node)), 10, "the TLS association was not audited")
    assert subprocess.run([require("echoscu"), "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", str(node.port)],
                          env=DCMTK_ENV, capture_output=True, timeout=60).returncode == 0, "plain port beside it"


def instances(node: NodeProcess) -> int:
    db = node.database()
    try:
        with db.read() as session:
            return len(session.scalars(select(Instance)).all())
    finally:
        db.dispose()


def test_a_peer_that_must_use_tls_stores_nothing_over_the_plain_port_though_it_is_an_allowed_caller(
        node: NodeProcess, pki: PKI, small_series: PhantomSeries) -> None:
    plain = storescu(node.port, small_series.paths[:2], calling="MODALITY")
    assert plain.returncode != 0 and "Association Rejected" in plain.stderr, plain
    assert instances(node) == 0, "stored over the plain port"
    wait_for(lambda: any(e.outcome == "refused" and e.calling_ae_title == "MODALITY" and not e.tls and
                         "'MODALITY' must call over TLS" in e.detail for e in audit(node)), 10,
             "the plain refusal was not audited")
    secure = storescu(node.tls_port, small_series.paths[:2], calling="MODALITY",  # type: ignore[attr-defined]
                      extra=["+tls", pki["modality.key"], pki["modality.crt"], "+cf", pki["ca.crt"]])
    assert secure.returncode == 0, secure.stderr
    assert instances(node) == 2, "over TLS it stores"


@pytest.mark.parametrize(("key", "cert", "ca", "why"), [
    ("intruder.key", "intruder.crt", "ca.crt", "a certificate of another authority"),
    (None, None, "ca.crt", "no client certificate where one is required"),
    ("modality.key", "modality.crt", "rogue.crt", "the client does not trust the node's authority"),
])
def test_a_caller_without_the_right_certificates_is_refused(node: NodeProcess, pki: PKI, key: str | None,
                                                            cert: str | None, ca: str, why: str) -> None:
    result = tls_echo(node.tls_port, key and pki[key], cert and pki[cert], pki[ca])  # type: ignore[attr-defined]
    assert result.returncode != 0, why
    if ca == "ca.crt":  # the node itself refused the handshake: audited
        wait_for(lambda: any(e.outcome == "refused" and e.tls and "TLS handshake failed" in e.detail
                             for e in audit(node)), 10, "the refused handshake was not audited")
    assert tls_echo(node.tls_port, pki["modality.key"], pki["modality.crt"],  # type: ignore[attr-defined]
                    pki["ca.crt"]).returncode == 0, "still serving"


def handshake(port: int, pki: PKI, version: str) -> tuple[int, str]:
    """openssl s_client's return code and transcript (-msg: what each side sent). SECLEVEL=0 lets this
    OpenSSL really offer TLS 1.0 and 1.1, which its default level forbids before a byte is sent."""
    result = subprocess.run([require("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", version, "-cipher",
                             "DEFAULT@SECLEVEL=0", "-msg", "-cert", pki["modality.crt"], "-key", pki["modality.key"],
                             "-CAfile", pki["ca.crt"]], input="", capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(("version", "name"), [("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")])
def test_tls_1_0_and_1_1_are_refused_while_1_2_is_accepted(node: NodeProcess, pki: PKI, version: str,
                                                           name: str) -> None:
    port = node.tls_port  # type: ignore[attr-defined]
    code, old = handshake(port, pki, version)
    if "no protocols available" in old:
        pytest.skip(f"this OpenSSL cannot offer {name} even at SECLEVEL=0, so the node's refusal cannot be tested")
    assert f">>> {name}, Handshake" in old and "ClientHello" in old, f"the client did not offer {name}:\n{old}"
    assert code != 0 and "Cipher is (NONE)" in old, f"{name} was accepted:\n{old}"
    assert "<<< " in old and "protocol_version" in old, f"the node did not refuse the version:\n{old}"
    wait_for(lambda: any(e.outcome == "refused" and e.tls and e.detail == "TLS handshake failed: UNSUPPORTED_PROTOCOL"
                         for e in audit(node)), 10,
             lambda: f"the refused {name} handshake was not audited: {[e.detail for e in audit(node)]}")

    code, new = handshake(port, pki, "-tls1_2")
    assert code == 0 and "Protocol  : TLSv1.2" in new and "Cipher is (NONE)" not in new, new
    assert tls_echo(port, pki["modality.key"], pki["modality.crt"], pki["ca.crt"]).returncode == 0, "still serving"


def test_results_are_delivered_over_tls_to_a_pacs_that_requires_it(tmp_path: Path, pki: PKI,
                                                                   small_series: PhantomSeries) -> None:
    pacs = StoreSCP(tmp_path / "pacs", extra=["+tls", pki["pacs.key"], pki["pacs.crt"], "+cf", pki["ca.crt"]])
    pacs.start()
    node = NodeProcess(tmp_path / "node", pacs.port)
    node.config.write_text(node.config.read_text().replace('ae_title = "PACS"\n', f'''ae_title = "PACS"
tls = true
ca_certificates = "{pki['ca.crt']}"
certificate = "{pki['node.crt']}"
private_key = "{pki['node.key']}"
''', 1))
    try:
        node.serve()
        sent = subprocess.run([require("storescu"), "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                               str(node.port), *map(str, small_series.paths)], env=DCMTK_ENV, capture_output=True,
                              text=True, timeout=300)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(pacs.files()) >= 2, 240, lambda: f"nothing arrived over TLS: {node.log_text()}")

        def delivered() -> list[AuditEvent]:  # recorded once the PACS has answered: after the file is there
            return [e for e in audit(node) if e.kind == "delivery" and e.outcome == "delivered"]

        wait_for(lambda: len(delivered()) == 2, 30, lambda: f"deliveries audited: {delivered()}")
    finally:
        node.stop()
        pacs.stop()


def a_result_to_deliver(node: NodeProcess, series: PhantomSeries) -> None:
    """A finished job with one result (a real DICOM file) for the node's sender to deliver once it starts
    (made before, so that the node's own settle loop does not take the series first)."""
    db = node.database()
    try:
        db.migrate()
        job_id = settled_job(db)
        assert queue.claim(db, "test", POLICY, MODELS) is not None
        relative = result_path("1.2.3", job_id, "SEG", "9.1")
        write_atomic(node.storage_root / relative, series.paths[0].read_bytes())
        queue.complete(db, job_id, "test", [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", "9.9",
                                                             str(relative))], ["pacs"])
    finally:
        db.dispose()


def deliveries(node: NodeProcess) -> list[Delivery]:
    db = node.database()
    try:
        with db.read() as session:
            return list(session.scalars(select(Delivery)))
    finally:
        db.dispose()


@pytest.mark.parametrize(("pacs_identity", "present", "why"), [
    ("intruder", True, "the PACS's certificate is of an authority the node does not trust"),
    ("pacs", False, "the PACS requires a client certificate the node does not present"),
])
def test_a_delivery_whose_tls_handshake_fails_is_recorded_and_retried(
        tmp_path: Path, pki: PKI, small_series: PhantomSeries, pacs_identity: str, present: bool, why: str) -> None:
    # The PACS trusts both authorities for its callers (so that its start-up probe can echo it).
    pacs = StoreSCP(tmp_path / "pacs", extra=["+tls", pki[f"{pacs_identity}.key"], pki[f"{pacs_identity}.crt"],
                                              "+cf", pki["ca.crt"], "+cf", pki["rogue.crt"]]).start()
    node = NodeProcess(tmp_path / "node", pacs.port, workers=0)
    identity = f'certificate = "{pki["node.crt"]}"\nprivate_key = "{pki["node.key"]}"\n' if present else ""
    node.config.write_text(node.config.read_text().replace('ae_title = "PACS"\n', f'''ae_title = "PACS"
tls = true
ca_certificates = "{pki['ca.crt']}"
{identity}''', 1))
    try:
        a_result_to_deliver(node, small_series)
        node.serve()
        def failures() -> list[AuditEvent]:
            return [e for e in audit(node) if e.kind == "delivery" and e.outcome == "failed"]

        wait_for(lambda: len(failures()) >= 2, 60,
                 lambda: f"{why}: not retried: {[(d.state, d.attempts, d.error) for d in deliveries(node)]}")
        assert all("TLS handshake failed" in e.detail for e in failures()), [e.detail for e in failures()]
        (delivery,) = deliveries(node)
        assert delivery.state != "delivered" and delivery.delivered_at is None and delivery.attempts >= 2, why
        assert "TLS handshake failed" in (delivery.error or ""), delivery.error
        assert pacs.files() == [], why
    finally:
        node.stop()
        pacs.stop()
