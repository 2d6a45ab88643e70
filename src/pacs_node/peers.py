"""Who may call: each allowed caller by AE title and, optionally, the addresses or networks it may call
from and whether it must use TLS. A caller that is not admitted is refused at association with the
reason, which the audit trail records."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peer:
    name: str
    ae_title: str
    networks: tuple[Network, ...] = ()  # empty: any address
    require_tls: bool = False
    settle_seconds: float | None = None  # its own settle time (a peer that sends one series in several goes)

    @classmethod
    def parse(cls, name: str, ae_title: str, addresses: Iterable[str] = (), require_tls: bool = False,
              settle_seconds: float | None = None) -> Peer:
        """``addresses`` as written in the configuration: "10.1.2.3", "10.1.2.0/24", "fd00::/8"."""
        return cls(name, ae_title, tuple(ipaddress.ip_network(a, strict=False) for a in addresses), require_tls,
                   settle_seconds)

    def admits(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


@dataclass(frozen=True)
class Admission:
    """Why a caller is refused: ``identity`` refusals are permanent (a wrong AE title, address or transport),
    others transient (the sender may try again later: the node is full, or its disk is)."""

    reason: str
    identity: bool = True
    limit: bool = False  # transient because of the association limit


def admit(peers: Iterable[Peer], ae_title: str, address: str, tls: bool) -> Admission | None:
    """None when some peer entry admits this caller, else why not (the most specific reason)."""
    entries = [p for p in peers if p.ae_title == ae_title]
    if not entries:
        return Admission(f"calling AE title {ae_title!r} is not an allowed caller")
    placed = [p for p in entries if p.admits(address)]
    if not placed:
        return Admission(f"{ae_title!r} may not call from {address}")
    if not any(tls or not p.require_tls for p in placed):
        return Admission(f"{ae_title!r} must call over TLS")
    return None


def settle_seconds(peers: Iterable[Peer], ae_title: str) -> float | None:
    """The settle time the peer with this AE title asks for (the longest, if several entries name it)."""
    times = [p.settle_seconds for p in peers if p.ae_title == ae_title and p.settle_seconds is not None]
    return max(times) if times else None
