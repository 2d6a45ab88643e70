from pathlib import Path

import pytest

from db.storage import InvalidUID, check_uid, instance_path, result_path, write_atomic


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


def test_start_up_removes_what_a_killed_worker_left_under_results_unless_its_job_has_not_ended(
        tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    """Real files in job folders: a finished job's temporary and unrecorded files go, its recorded result
    stays; a running or queued job's files (a worker elsewhere may be writing them, or claim it a moment
    later and write the same names) and files outside a job folder stay."""
    from db import leftovers, queue
    from test_queue import MODELS, POLICY, settled_job

    done, running = settled_job(database, "1.2.3.4"), settled_job(database, "1.2.3.5")
    claimed = queue.claim(database, "w", POLICY, MODELS)
    assert claimed is not None and claimed.id == done
    assert queue.claim(database, "w2", POLICY, MODELS) is not None  # ``running`` stays running
    queued = settled_job(database, "1.2.3.6")  # an earlier attempt failed; its retry is not claimed yet
    kept = result_path("1.2.3", done, "SEG", "9.1")
    write_atomic(tmp_path / kept, b"recorded")
    assert queue.complete(database, done, "w", [queue.ResultFile("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", "9",
                                                                 str(kept))], [])
    unfinished = result_path("1.2.3", done, "SR", "9.2")  # an earlier attempt's, killed before completing
    write_atomic(tmp_path / unfinished, b"no row")
    partial = kept.parent / ".incoming-k1ll3d.part"
    (tmp_path / partial).write_bytes(b"half")
    being_written = result_path("1.2.3", running, "SEG", "9.3")
    write_atomic(tmp_path / being_written, b"written, not yet completed")
    writing = being_written.parent / ".incoming-x.part"
    (tmp_path / writing).write_bytes(b"being written")
    retried = result_path("1.2.3", queued, "SEG", "9.4").parent / ".incoming-q.part"
    (tmp_path / retried).parent.mkdir(parents=True)
    (tmp_path / retried).write_bytes(b"a queued job's")
    stranger = Path("results/notes/.incoming-y.part")
    (tmp_path / stranger).parent.mkdir(parents=True)
    (tmp_path / stranger).write_bytes(b"not a job's")

    left = leftovers.reconcile_results(database, tmp_path)
    assert (left.partial_files, left.unfinished_files) == ([str(partial)], [str(unfinished)])
    remaining = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert remaining == sorted(map(str, [kept, being_written, writing, retried, stranger]))
    assert leftovers.reconcile_results(database, tmp_path) == leftovers.ResultLeftovers([], [])
