"""Single-socket ICE demux table (Pion's UDPMux algorithm, sans-I/O).

Every datagram reaching the transceiver names its client (see ``relays.framing``). Routing:
a known client address goes to its session; else a STUN message whose USERNAME starts with a
live session's ufrag (RFC 8445 section 7.2.2: requests carry ``ourUfrag:theirUfrag``) and whose
MESSAGE-INTEGRITY verifies under that session's password binds the address to that session;
else the datagram is dropped and counted. Pure: no socket, no clock.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fleet.addresses import Addr
from relays.stun import has_valid_integrity, looks_like_stun, parse_username

K = TypeVar("K", bound=Hashable)


class DropReason(enum.Enum):
    BAD_FRAME = "bad_frame"
    UNKNOWN_ADDRESS = "unknown_address"  # not STUN, and no session knows this client
    BAD_STUN = "bad_stun"  # STUN without a readable USERNAME
    UNKNOWN_UFRAG = "unknown_ufrag"
    BAD_INTEGRITY = "bad_integrity"  # a live ufrag, but not signed with its password: forged
    NO_RELAY = "no_relay"  # an outgoing datagram to a client no relay ever forwarded


@dataclass(slots=True)
class _Entry(Generic[K]):
    """One session record and all of its keys."""

    ufrag: str
    key: bytes  # the session's ICE password: what a client's checks are signed with
    addresses: set[Addr] = field(default_factory=set)


class MuxTable(Generic[K]):
    """Ufrag and learned-address routes to session keys, plus the relay serving each client."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry[K]] = {}
        self._by_ufrag: dict[str, K] = {}
        self._by_addr: dict[Addr, K] = {}
        self._relay_of: dict[Addr, Addr] = {}
        self.drops: Counter[DropReason] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def add(self, key: K, ufrag: str, pwd: str) -> None:
        """Register a session under its server ufrag and ICE password; ``ValueError`` if the
        session or the ufrag is taken."""
        if key in self._entries:
            raise ValueError("session exists")
        if ufrag in self._by_ufrag:
            raise ValueError("ufrag in use")
        self._entries[key] = _Entry(ufrag, pwd.encode())
        self._by_ufrag[ufrag] = key

    def remove(self, key: K) -> None:
        """Remove a session and all its keys (ufrag, learned addresses, relay of each address)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if self._by_ufrag.get(entry.ufrag) == key:  # only if it still points to this session
            del self._by_ufrag[entry.ufrag]
        for addr in entry.addresses:
            if self._by_addr.get(addr) == key:
                del self._by_addr[addr]
                self._relay_of.pop(addr, None)

    def has_ufrag(self, ufrag: str) -> bool:
        return ufrag in self._by_ufrag

    def addresses(self, key: K) -> frozenset[Addr]:
        entry = self._entries.get(key)
        return frozenset(entry.addresses) if entry else frozenset()

    def route(self, client: Addr, relay: Addr, payload: bytes | memoryview) -> K | None:
        """Return the session for a datagram from ``client`` forwarded by ``relay``, or None."""
        key = self._by_addr.get(client)
        if key is None:
            key = self._route_stun(client, payload)
            if key is None:
                return None
        self._relay_of[client] = relay  # replies go through the relay that last forwarded
        return key

    def _route_stun(self, client: Addr, payload: bytes | memoryview) -> K | None:
        if not looks_like_stun(payload):
            self.drops[DropReason.UNKNOWN_ADDRESS] += 1
            return None
        try:
            username = parse_username(payload)
        except ValueError:
            self.drops[DropReason.BAD_STUN] += 1
            return None
        key = self._by_ufrag.get(username.partition(":")[0])
        if key is None:
            self.drops[DropReason.UNKNOWN_UFRAG] += 1
            return None
        entry = self._entries[key]
        if not has_valid_integrity(payload, entry.key):  # RFC 8445 section 7.3: bind only
            self.drops[DropReason.BAD_INTEGRITY] += 1  # what the session's peer signed
            return None
        entry.addresses.add(client)
        self._by_addr[client] = key
        return key

    def relay_for(self, client: Addr) -> Addr | None:
        """The relay to send a datagram for ``client`` through; None (counted) if unknown."""
        relay = self._relay_of.get(client)
        if relay is None:
            self.drops[DropReason.NO_RELAY] += 1
        return relay

    def count_bad_frame(self) -> None:
        self.drops[DropReason.BAD_FRAME] += 1
