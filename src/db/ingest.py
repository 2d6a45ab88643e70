"""Recording what arrived: studies, series and instances, and when a series' association ended.

Called by the C-STORE handler before it answers, so a success on the wire means the row is committed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, case, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import Database
from db.models import Instance, Series, Study, utcnow
from db.states import SeriesState
from db.storage import PARTIAL_PREFIX, PARTIAL_SUFFIX


@dataclass(frozen=True)
class ReceivedInstance:
    """The attributes of a received instance the database keeps; UIDs already validated."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    path: str
    size_bytes: int
    calling_ae_title: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession_number: str = ""
    study_description: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    body_part_examined: str = ""
    protocol_name: str = ""
    image_type: str = ""  # values joined by backslashes, as DICOM writes them
    manufacturer: str = ""
    slice_thickness: float | None = None


def is_stored(db: Database, sop_instance_uid: str) -> bool:
    """Whether the instance is on disk and recorded (one that retention purged is not)."""
    with db.read() as session:
        return session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid,
                                                        Instance.purged_at.is_(None))) is not None


def record_instance(db: Database, item: ReceivedInstance, now: dt.datetime | None = None) -> bool:
    """Insert the instance (and its study and series when new); False if it was already recorded.

    The common case — another instance of a series already known — is two statements and one commit,
    because this runs before every C-STORE response.
    """
    now = now or utcnow()
    try:
        with db.transaction() as session:
            series_id = session.scalar(
                update(Series).where(Series.series_instance_uid == item.series_instance_uid)
                .values(state=SeriesState.RECEIVING, instance_count=Series.instance_count + 1, last_received_at=now,
                        purged_at=None)  # a purged series that receives again has files retention must see
                .returning(Series.id)
            )
            if series_id is None:
                series_id = _new_series(session, item, now)
            session.execute(insert(Instance).values(
                series_id=series_id, sop_instance_uid=item.sop_instance_uid, sop_class_uid=item.sop_class_uid,
                transfer_syntax_uid=item.transfer_syntax_uid, instance_number=item.instance_number,
                path=item.path, size_bytes=item.size_bytes, calling_ae_title=item.calling_ae_title,
                received_at=now))
    except IntegrityError:
        if is_stored(db, item.sop_instance_uid):
            return False  # sent twice at the same moment: the other copy was recorded
        if _received_again(db, item, now):
            return True
        raise
    return True


def _received_again(db: Database, item: ReceivedInstance, now: dt.datetime) -> bool:
    """An instance retention purged, sent again: its row takes the new file, and its series receives again."""
    with db.transaction() as session:
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid,
                                                         Instance.purged_at.is_not(None)))
        if instance is None:
            return False
        instance.path, instance.size_bytes, instance.received_at = item.path, item.size_bytes, now
        instance.calling_ae_title, instance.purged_at = item.calling_ae_title, None
        session.execute(update(Series).where(Series.id == instance.series_id)
                        .values(state=SeriesState.RECEIVING, last_received_at=now, purged_at=None))
    return True


def _new_series(session: Session, item: ReceivedInstance, now: dt.datetime) -> int:
    study = session.scalar(select(Study).where(Study.study_instance_uid == item.study_instance_uid))
    if study is None:
        study = Study(study_instance_uid=item.study_instance_uid, patient_id=item.patient_id,
                      patient_name=item.patient_name, study_date=item.study_date,
                      accession_number=item.accession_number, study_description=item.study_description,
                      created_at=now)
        session.add(study)
    series = Series(study=study, series_instance_uid=item.series_instance_uid, modality=item.modality,
                    series_number=item.series_number, series_description=item.series_description,
                    body_part_examined=item.body_part_examined, protocol_name=item.protocol_name,
                    image_type=item.image_type, manufacturer=item.manufacturer, slice_thickness=item.slice_thickness,
                    sop_class_uid=item.sop_class_uid, calling_ae_title=item.calling_ae_title,
                    state=SeriesState.RECEIVING, instance_count=1, first_received_at=now, last_received_at=now)
    session.add(series)
    session.flush()
    return int(series.id)


def release_series(db: Database, outcomes: Mapping[str, str | None], now: dt.datetime | None = None,
                   settle_seconds: float | None = None, started_at: dt.datetime | None = None) -> None:
    """The association that sent these series has ended: their settle time starts now. ``outcomes`` maps
    each series to why this transfer may have left it partial (aborted, a failure status), or None when
    the association ended with a normal release and every instance was stored. ``settle_seconds``: the
    sending peer's own settle time, if it has one.

    A clean end clears a series' earlier reason only if this association started (``started_at``) after
    every earlier one had ended: a sender's retry. One that ran alongside a transfer that went wrong cannot
    vouch for what that one left out, so the mark stays and the series waits for the retry."""
    if not outcomes:
        return
    by_reason: dict[str | None, list[str]] = {}
    for uid, reason in sorted(outcomes.items()):
        by_reason.setdefault(reason, []).append(uid)
    after_the_others = Series.released_at.is_(None) if started_at is None else \
        or_(Series.released_at.is_(None), Series.released_at <= started_at)
    with db.transaction() as session:
        for reason, uids in by_reason.items():
            marked = reason if reason is not None else \
                case((after_the_others, None), else_=Series.incomplete_reason)
            session.execute(update(Series).where(Series.series_instance_uid.in_(uids))
                            .values(released_at=now or utcnow(), incomplete_reason=marked,
                                    settle_seconds=settle_seconds))


def release_abandoned(db: Database, now: dt.datetime | None = None) -> int:
    """At start-up no association is open: series left receiving by a stopped node start settling now, as
    possibly partial (the node may have stopped in the middle of a transfer)."""
    with db.transaction() as session:
        result = session.execute(
            update(Series)
            .where(Series.state == SeriesState.RECEIVING,
                   or_(Series.released_at.is_(None), Series.released_at < Series.last_received_at))
            .values(released_at=now or utcnow(), incomplete_reason="the node stopped while receiving this series")
        )
        return int(cast(CursorResult[Any], result).rowcount or 0)


@dataclass(frozen=True)
class Reconciled:
    partial_files: list[str]  # temporary files of writes a stop interrupted, removed
    unrecorded_files: list[str]  # complete files whose row was never committed (never acknowledged), removed


def reconcile_storage(db: Database, root: Path) -> Reconciled:
    """At start-up, before any association: remove what an interrupted receive left under ``incoming/``
    (which the receiving node alone writes; workers elsewhere only read it).

    A temporary file is a write that never finished; a file without a row was written but never recorded,
    so never acknowledged: the sender will send it again."""
    incoming = root / "incoming"
    if not incoming.is_dir():
        return Reconciled([], [])
    with db.read() as session:
        recorded = set(session.scalars(select(Instance.path)))
    partial, unrecorded = [], []
    for path in incoming.rglob("*"):
        if not path.is_file():
            continue
        relative = str(path.relative_to(root))
        if path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(PARTIAL_SUFFIX):
            partial.append(relative)
        elif relative not in recorded:
            unrecorded.append(relative)
        else:
            continue
        path.unlink(missing_ok=True)
    return Reconciled(sorted(partial), sorted(unrecorded))
