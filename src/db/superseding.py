"""What a job that supersedes another retracts, and where (IHE IOCM rejection note).

Decided once, when the newer job is claimed: the replaced job's SEG and SR deliveries that are not
delivered yet are withdrawn then, so none of them is sent while the newer job runs. What has or may have
reached a destination — delivered, being sent, or tried at least once (a PACS may have stored an object
whose answer timed out) — is what the rejection note references, and every such destination is where it
goes. Nothing of the replaced job is sent after the claim, so completion finds the same set.

The replaced job's own rejection notes (for the job it replaced in turn) are left to be delivered: they
retract older results the newer note does not name.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db import outbox
from db.models import Delivery, Job, Result
from db.states import DeliveryState

REJECTION_NOTE = "KO"  # the kind of result that retracts a superseded job's results


def may_have_reached(delivery: Delivery) -> bool:
    """Whether the destination has, or may have, the object: it answered success, or a send was started."""
    return delivery.state == DeliveryState.DELIVERED or delivery.attempts > 0


def _retractable(job: Job) -> list[Result]:
    return [r for r in job.results if r.kind != REJECTION_NOTE]


def withdraw(session: Session, replaced: Job | None) -> list[Result]:
    """At claim time, within its transaction: stop every delivery of ``replaced``'s SEG and SR not delivered
    yet; returns the results the newer job's rejection note must reference."""
    if replaced is None:
        return []
    results = _retractable(replaced)
    outbox.withdraw(session, [r.id for r in results])
    return [r for r in results if any(may_have_reached(d) for d in r.deliveries)]


def holders(replaced: Job | None) -> list[str]:
    """The destinations that have, or may have, one of ``replaced``'s SEG and SR: where the note goes."""
    if replaced is None:
        return []
    return sorted({d.destination for r in _retractable(replaced) for d in r.deliveries if may_have_reached(d)})
