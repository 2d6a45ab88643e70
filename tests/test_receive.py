"""The receiver against real DCMTK peers (echoscu, storescu) and pynetdicom, on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ainode.kit import send_files, wait_for
from conftest import PhantomSeries, echoscu, free_port, storescu
from db.engine import Database
from db.models import Instance, Series
from pacs_node.listen import start
from pacs_node.scp import ReceiverConfig


@pytest.fixture()
def receiver(tmp_path: Path, database: Database) -> Iterator[ReceiverConfig]:
    config = ReceiverConfig("AINODE", "127.0.0.1", free_port(), ("STORESCU",), tmp_path / "store")
    server = start(config, database)
    yield config
    server.shutdown()


def count(db: Database, model: type) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def test_echo_and_an_allowed_caller_are_accepted_others_refused(receiver: ReceiverConfig) -> None:
    assert echoscu(receiver.port, "AINODE", "STORESCU")
    assert not echoscu(receiver.port, "AINODE", "INTRUDER")
    assert not echoscu(receiver.port, "NOT-AINODE", "STORESCU"), "the called AE title must be ours"


def test_a_series_is_on_disk_and_in_the_database_when_acknowledged(
        receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    result = storescu(receiver.port, small_series.paths)
    assert result.returncode == 0, result.stderr

    def released() -> bool:
        with database.read() as session:
            return session.scalar(select(Series.released_at)) is not None

    wait_for(released, 10, "the association's end was not recorded on the series")
    with database.transaction() as session:
        instances = session.scalars(select(Instance)).all()
        series = session.scalar(select(Series))
        assert len(instances) == len(small_series.paths) == series.instance_count
        assert series.study.patient_id == small_series.identity.patient_id
        for instance in instances:
            stored = receiver.storage_root / instance.path
            assert stored.stat().st_size == instance.size_bytes
            assert instance.path.startswith(f"incoming/{small_series.identity.study_instance_uid}/")
    assert not list(receiver.storage_root.rglob("*.part")), "no temporary files left"


def test_the_same_instance_sent_twice_is_stored_once(receiver: ReceiverConfig, database: Database,
                                                    small_series: PhantomSeries) -> None:
    paths = small_series.paths[:5]
    assert storescu(receiver.port, paths).returncode == 0
    assert storescu(receiver.port, paths).returncode == 0
    assert count(database, Instance) == 5
    assert len(list(receiver.storage_root.rglob("*.dcm"))) == 5


def test_a_truncated_dataset_gets_a_failure_status_and_the_server_keeps_serving(
        tmp_path: Path, receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(small_series.paths[0].read_bytes()[:-20000])
    statuses = send_files([truncated, small_series.paths[1]], receiver.port, calling="STORESCU")
    assert statuses == [0xC210, 0x0000]
    assert count(database, Instance) == 1
    assert storescu(receiver.port, small_series.paths[2:4]).returncode == 0
    assert count(database, Instance) == 3


def test_a_disk_error_answers_out_of_resources_and_nothing_is_recorded(
        receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    receiver.storage_root.mkdir(parents=True, exist_ok=True)
    (receiver.storage_root / "incoming").write_text("a file where the folder should be")
    statuses = send_files(small_series.paths[:2], receiver.port, calling="STORESCU")
    assert statuses == [0xA700, 0xA700]
    assert count(database, Instance) == 0
    os.unlink(receiver.storage_root / "incoming")
    assert send_files(small_series.paths[:2], receiver.port, calling="STORESCU") == [0, 0]
    assert count(database, Instance) == 2


def test_compressed_transfer_syntaxes_are_accepted_as_they_come(
        tmp_path: Path, receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    """storescu sends JPEG-LS, JPEG 2000 and RLE files in their own transfer syntax."""
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    syntaxes = {JPEGLSLossless: "-xt", JPEG2000Lossless: "-xv", RLELossless: "-xr"}
    for n, (syntax, option) in enumerate(syntaxes.items()):
        ds = dcmread(small_series.paths[10 + n])
        ds.compress(syntax)
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path)
        result = storescu(receiver.port, [path], extra=["-R", option])  # propose only that transfer syntax
        assert result.returncode == 0, result.stderr
    with database.transaction() as session:
        stored = sorted(session.scalars(select(Instance.transfer_syntax_uid)).all())
    assert stored == sorted(syntaxes)


def test_objects_without_pixels_from_a_whole_study_are_stored_too(
        tmp_path: Path, receiver: ReceiverConfig, database: Database) -> None:
    """A PACS sends whole studies: an SR must not make its send fail; the worker later says why it is ignored."""
    from conftest import SHARED_DATA

    sr = SHARED_DATA / "dcmqi" / "data" / "sr-example" / "sr.dcm"
    result = storescu(receiver.port, [sr])
    assert result.returncode == 0, result.stderr
    assert count(database, Instance) == 1


def _incomplete_reason(db: Database) -> object:
    with db.read() as session:
        series = session.scalar(select(Series))
        return series.incomplete_reason if series is not None and series.released_at is not None else False


def test_an_aborted_association_marks_its_series_possibly_partial(
        receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="AINODE")
    assert assoc.is_established
    assert [assoc.send_c_store(p).Status for p in small_series.paths[:3]] == [0, 0, 0]
    assoc.abort()
    reason = wait_for(lambda: _incomplete_reason(database), 10, "the abort was not recorded on the series")
    assert reason == "the association ended without a release (aborted or connection lost)"
    assert storescu(receiver.port, small_series.paths).returncode == 0  # the sender's retry, released normally
    wait_for(lambda: _incomplete_reason(database) is None, 10, "a complete retry did not clear the mark")


def test_a_refused_instance_marks_its_series_possibly_partial(
        tmp_path: Path, receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(small_series.paths[0].read_bytes()[:-20000])
    assert send_files([small_series.paths[1], truncated], receiver.port, calling="STORESCU") == [0, 0xC210]
    reason = wait_for(lambda: _incomplete_reason(database), 10, "the refusal was not recorded on the series")
    assert str(reason).startswith("an instance was answered 0xC210: Pixel Data is truncated")


def test_an_undecodable_element_is_refused_by_name_and_nothing_is_written(
        tmp_path: Path, receiver: ReceiverConfig, database: Database, small_series: PhantomSeries) -> None:
    """A VR of 'IC' on PatientName: pydicom raises only when the value is read; the node reads everything it
    records before writing, so the answer is 0xC210 naming the element and no file stays behind."""
    raw = small_series.paths[3].read_bytes()
    tag = b"\x10\x00\x10\x00PN"  # (0010,0010) PatientName, explicit VR little endian
    assert raw.count(tag) == 1
    broken = tmp_path / "ic.dcm"
    broken.write_bytes(raw.replace(tag, b"\x10\x00\x10\x00IC"))
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="AINODE")
    assert assoc.is_established
    status = assoc.send_c_store(broken)
    assoc.release()
    assert status.Status == 0xC210 and "PatientName" in str(status.ErrorComment), status
    assert count(database, Instance) == 0
    assert not [p for p in receiver.storage_root.rglob("*") if p.is_file()], "nothing written"
