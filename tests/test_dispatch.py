"""Delivering results to DCMTK storescp: success recorded, a PACS that is down only delays delivery."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from conftest import PhantomSeries, StoreSCP, free_port
from db import outbox, queue
from db.engine import Database
from db.models import Delivery, utcnow
from pacs_node.dispatch import Destination, Dispatcher
from test_queue import MODELS, settled_job


def queue_delivery(database: Database, root: Path, source: Path) -> int:
    target = root / "results" / "seg.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    ds = dcmread(target, stop_before_pixels=True)
    job_id = settled_job(database)
    queue.claim(database, "w", queue.QueuePolicy(), MODELS)
    queue.complete(database, job_id, "w", [queue.ResultFile("SEG", ds.SOPClassUID, ds.SOPInstanceUID,
                                                            ds.SeriesInstanceUID, "results/seg.dcm")], ["pacs"])
    return job_id


def test_a_result_reaches_storescp_and_its_status_is_recorded(
        tmp_path: Path, database: Database, pacs: StoreSCP, small_series: PhantomSeries) -> None:
    queue_delivery(database, tmp_path, small_series.paths[0])
    dispatcher = Dispatcher(database, tmp_path, "AINODE", {"pacs": Destination("pacs", "127.0.0.1", pacs.port, "PACS")},
                            outbox.DeliveryPolicy(), "sender")
    assert dispatcher.deliver_one()
    assert not dispatcher.deliver_one(), "nothing left to send"
    with database.transaction() as session:
        delivery = session.scalar(select(Delivery))
        assert (delivery.state, delivery.last_status, delivery.attempts) == ("delivered", 0, 1)
    (received,) = pacs.files()
    sent, got = dcmread(small_series.paths[0]), dcmread(received)
    assert (got.SOPInstanceUID, got.PixelData) == (sent.SOPInstanceUID, sent.PixelData)


def test_a_pacs_that_is_down_delays_the_delivery_until_it_is_back(
        tmp_path: Path, database: Database, small_series: PhantomSeries) -> None:
    queue_delivery(database, tmp_path, small_series.paths[0])
    pacs = StoreSCP(tmp_path / "pacs")
    destination = Destination("pacs", "127.0.0.1", pacs.port, "PACS")
    dispatcher = Dispatcher(database, tmp_path, "AINODE", {"pacs": destination},
                            outbox.DeliveryPolicy(backoff_seconds=60), "sender")
    assert dispatcher.deliver_one()
    with database.transaction() as session:
        delivery = session.scalar(select(Delivery))
        assert delivery.state == "pending" and "refused or did not answer" in delivery.error
        assert delivery.not_before > utcnow() + dt.timedelta(seconds=50)
        delivery.not_before = utcnow()  # skip the wait instead of sleeping through it
    pacs.start()
    try:
        assert dispatcher.deliver_one()
    finally:
        pacs.stop()
    with database.transaction() as session:
        delivery = session.scalar(select(Delivery))
        assert (delivery.state, delivery.attempts, delivery.error) == ("delivered", 2, None)
    assert len(pacs.files()) == 1


def test_an_unknown_destination_is_recorded_not_crashed_on(tmp_path: Path, database: Database,
                                                          small_series: PhantomSeries) -> None:
    queue_delivery(database, tmp_path, small_series.paths[0])
    dispatcher = Dispatcher(database, tmp_path, "AINODE", {}, outbox.DeliveryPolicy(), "sender")
    assert dispatcher.deliver_one()
    with database.transaction() as session:
        assert "destination 'pacs' is not configured" in session.scalar(select(Delivery)).error


def test_a_peer_that_refuses_the_association_is_retried(tmp_path: Path, database: Database,
                                                        small_series: PhantomSeries) -> None:
    """ainode's own receiver as a PACS that does not know our calling AE title: A-ASSOCIATE-RJ."""
    from pacs_node.listen import start
    from pacs_node.scp import ReceiverConfig

    config = ReceiverConfig("PACS", "127.0.0.1", free_port(), ("SOMEONE-ELSE",), tmp_path / "peer")
    server = start(config, database)
    try:
        queue_delivery(database, tmp_path, small_series.paths[0])
        dispatcher = Dispatcher(database, tmp_path, "AINODE",
                                {"pacs": Destination("pacs", "127.0.0.1", config.port, "PACS")},
                                outbox.DeliveryPolicy(), "sender")
        assert dispatcher.deliver_one()
    finally:
        server.shutdown()
    with database.transaction() as session:
        delivery = session.scalar(select(Delivery))
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert "refused or did not answer the association" in delivery.error
