"""What each association has sent and how it ended: the series it touched and, per series, why the
transfer may have left it partial. A series with such a reason waits longer for the sender's retry."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Transfer:
    """What one association has sent: each series it touched, with the first reason it may be partial."""

    series: dict[str, str | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # failure statuses for instances of no known series
    released: bool = False
    current: str | None = None  # the series of the request being handled (one at a time per association)

    def refused(self, status: str) -> None:
        """An instance of the current request was answered with a failure ``status``."""
        if self.current is None:
            self.failures.append(status)
        elif self.series[self.current] is None:
            self.series[self.current] = f"an instance was answered {status}"

    def outcomes(self) -> dict[str, str | None]:
        """Per series, why this transfer may have left it partial, or None when nothing went wrong."""
        if not self.released:
            return {uid: "the association ended without a release (aborted or connection lost)"
                    for uid in self.series}
        orphan = f"an instance of unknown series was refused ({self.failures[0]})" if self.failures else None
        return {uid: reason or orphan for uid, reason in self.series.items()}
