"""The delivery outbox: the only code that writes a delivery's state.

Deliveries are created with their job's results (``queue.complete``); a sender claims one at a time with
a lease, and records the peer's answer. Nothing is ever given up: a failed send waits longer each time
(capped) and is tried again, because a PACS that is down must not lose a result. Only a superseded
result's deliveries stop (``withdraw``): its rejection note goes wherever a send of it was started.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from db.backoff import Backoff
from db.engine import Database
from db.models import AuditEvent, Delivery, utcnow
from db.states import DeliveryState


@dataclass(frozen=True)
class DeliveryPolicy(Backoff):
    lease_seconds: float = 120.0
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 300.0


@dataclass(frozen=True)
class DeliveryTask:
    id: int
    destination: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    attempt: int


def withdraw(session: Session, result_ids: list[int]) -> int:
    """Within the caller's transaction: deliveries of these results not delivered yet will never be sent
    (their results were superseded). One being sent keeps its attempt: its sender records the answer, but a
    failure is not retried. Returns how many were withdrawn."""
    if not result_ids:
        return 0
    deliveries = session.scalars(
        select(Delivery).where(Delivery.result_id.in_(result_ids),
                               Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
        .with_for_update()
    ).all()
    for delivery in deliveries:
        delivery.error = "superseded by a newer result before it was sent" if delivery.attempts == 0 else \
            f"superseded by a newer result after {delivery.attempts} attempt(s): retracted by its rejection note"
        delivery.state = DeliveryState.WITHDRAWN
    return len(deliveries)


def claim(db: Database, sender: str, policy: DeliveryPolicy) -> DeliveryTask | None:
    now = utcnow()
    with db.transaction() as session:
        delivery = session.scalar(
            select(Delivery).where(
                or_(
                    and_(Delivery.state == DeliveryState.PENDING, Delivery.not_before <= now),
                    and_(Delivery.state == DeliveryState.SENDING, Delivery.lease_expires_at < now),
                )
            ).order_by(Delivery.not_before, Delivery.id).limit(1).with_for_update(skip_locked=True)
        )
        if delivery is None:
            return None
        delivery.state = DeliveryState.SENDING
        delivery.attempts += 1
        delivery.lease_owner = sender
        delivery.lease_expires_at = now + dt.timedelta(seconds=policy.lease_seconds)
        result = delivery.result
        return DeliveryTask(delivery.id, delivery.destination, result.path, result.sop_class_uid,
                            result.sop_instance_uid, delivery.attempts)


def _audit(delivery: Delivery, outcome: str, detail: str) -> AuditEvent:
    """Each attempt's outcome in the audit trail, written with the delivery's new state."""
    result = delivery.result
    return AuditEvent(at=utcnow(), actor=delivery.lease_owner or "sender", kind="delivery", outcome=outcome,
                      subject=f"delivery {delivery.id}: {result.kind} to {delivery.destination}",
                      detail=f"{result.sop_instance_uid}, attempt {delivery.attempts}: {detail}", count=1)


def delivered(db: Database, delivery_id: int, status: int) -> None:
    with db.transaction() as session:
        delivery = session.get(Delivery, delivery_id, with_for_update=True)
        if delivery is not None:
            session.add(_audit(delivery, "delivered", f"status 0x{status:04X}"))
            delivery.state, delivery.last_status, delivery.error = DeliveryState.DELIVERED, status, None
            delivery.delivered_at = utcnow()
            delivery.lease_owner = delivery.lease_expires_at = None


def failed(db: Database, delivery_id: int, reason: str, policy: DeliveryPolicy,
           status: int | None = None) -> dt.datetime:
    """Record a failed send and schedule the next try; returns when that will be."""
    with db.transaction() as session:
        delivery = session.get(Delivery, delivery_id, with_for_update=True)
        if delivery is None:
            return utcnow()
        session.add(_audit(delivery, "failed", reason))
        delivery.last_status = status
        if delivery.state == DeliveryState.WITHDRAWN:  # superseded while it was being sent: never again
            delivery.error = f"{delivery.error}; last attempt: {reason}"
        else:
            delivery.state, delivery.error = DeliveryState.PENDING, reason
            delivery.not_before = utcnow() + policy.backoff(delivery.attempts)
        delivery.lease_owner = delivery.lease_expires_at = None
        return delivery.not_before
