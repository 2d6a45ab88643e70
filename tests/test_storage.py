from pathlib import Path

import pytest

from db.storage import InvalidUID, check_uid, instance_path, write_atomic


@pytest.mark.parametrize("bad", ["", "1.2.", "1..2", "1.02", "../../etc", "1.2.3/4", "1.2." + "3" * 70, None, "1.2 3"])
def test_invalid_uids_are_refused_by_name(bad: object) -> None:
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        check_uid(bad, "StudyInstanceUID")


def test_valid_uids_pass_and_build_a_path_under_incoming() -> None:
    uid = check_uid("1.2.840.10008.5.1.4.1.1.2\x00", "SOPClassUID")
    assert uid == "1.2.840.10008.5.1.4.1.1.2"
    assert instance_path("1.2", "1.2.3", "1.2.3.4") == Path("incoming/1.2/1.2.3/1.2.3.4.dcm")


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    size = write_atomic(tmp_path / "a/b/c.dcm", [b"abc", b"def"])
    assert size == 6 and (tmp_path / "a/b/c.dcm").read_bytes() == b"abcdef"
    assert [p.name for p in (tmp_path / "a/b").iterdir()] == ["c.dcm"]


class _FullDisk(list):  # type: ignore[type-arg]
    """Chunks that fail half-way, as a full disk would."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield b"abc"
        raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "x/y.dcm", _FullDisk())
    assert list((tmp_path / "x").iterdir()) == []


def test_start_up_removes_interrupted_writes_and_unrecorded_files(tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    from db import ingest

    kept = instance_path("1.2", "1.2.3", "1.2.3.1")
    write_atomic(tmp_path / kept, b"recorded")
    ingest.record_instance(database, ingest.ReceivedInstance("1.2", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2",
                                                             "1.2.840.10008.1.2.1", "CT", str(kept), 8, "STORESCU"))
    unrecorded = instance_path("1.2", "1.2.3", "1.2.3.2")
    write_atomic(tmp_path / unrecorded, b"never acknowledged")
    partial = unrecorded.parent / ".incoming-abc123.part"
    (tmp_path / partial).write_bytes(b"half")
    left = ingest.reconcile_storage(database, tmp_path)
    assert (left.partial_files, left.unrecorded_files) == ([str(partial)], [str(unrecorded)])
    assert sorted(p.name for p in (tmp_path / kept).parent.iterdir()) == ["1.2.3.1.dcm"]
