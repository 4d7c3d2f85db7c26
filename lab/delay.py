"""The WAN delay line's core: which link a packet is on, when it leaves, whether it is lost.

Pure: packets, ``now`` and the loss draw come in; the TUN shell (``lab.delayline``) does I/O.
IPv4 header (RFC 791 section 3.1): version/IHL at byte 0, source at 12..16, destination 16..20.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

IPV4_MIN_HEADER = 20  # RFC 791 section 3.1


class Outcome(StrEnum):
    DELAYED = "delayed"
    PASSED = "passed"  # no known link: forwarded at once
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class DelayConfig:
    """Which continent each network is on, one-way delays between continents, loss fraction."""

    sites: tuple[tuple[ipaddress.IPv4Network, str], ...]
    one_way_s: Mapping[frozenset[str], float]
    loss: float = 0.0

    def continent_of(self, address: int) -> str | None:
        for network, continent in self.sites:
            if address & int(network.netmask) == int(network.network_address):
                return continent
        return None

    def delay_s(self, src: int, dst: int) -> float | None:
        """One-way delay between the sites of ``src`` and ``dst``; ``None`` off the map."""
        a, b = self.continent_of(src), self.continent_of(dst)
        if a is None or b is None:
            return None
        return self.one_way_s.get(frozenset({a, b}))


def parse_delay_config(data: Mapping[str, object]) -> DelayConfig:
    """From JSON: ``{"sites": [[cidr, continent]..], "one_way_ms": [[a, b, ms]..], "loss": f}``."""
    sites_raw, pairs_raw = data.get("sites"), data.get("one_way_ms")
    if not isinstance(sites_raw, list) or not isinstance(pairs_raw, list):
        raise ValueError("sites and one_way_ms must be lists")
    sites = tuple((ipaddress.IPv4Network(str(cidr)), str(continent))
                  for cidr, continent in sites_raw)
    one_way: dict[frozenset[str], float] = {}
    for a, b, ms in pairs_raw:
        if not 0 <= float(ms) <= 10_000:
            raise ValueError("delay must be 0..10000 ms")
        one_way[frozenset({str(a), str(b)})] = float(ms) / 1000
    loss = float(str(data.get("loss", 0.0)))
    if not 0.0 <= loss < 1.0:
        raise ValueError("loss must be 0 <= loss < 1")
    return DelayConfig(sites, one_way, loss)


def parse_endpoints(packet: bytes) -> tuple[int, int]:
    """(source, destination) of an IPv4 packet as integers."""
    if len(packet) < IPV4_MIN_HEADER or packet[0] >> 4 != 4:
        raise ValueError("not an IPv4 packet")
    return int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")


@dataclass
class DelayLine:
    """A heap of (due, seq, packet); ``push`` schedules, ``pop_due`` releases in due order."""

    config: DelayConfig
    counts: Counter[Outcome] = field(default_factory=Counter)
    _heap: list[tuple[float, int, bytes]] = field(default_factory=list)
    _seq: int = 0

    def push(self, packet: bytes, now: float, draw: float) -> Outcome:
        """Schedule ``packet``; ``draw`` is a uniform [0, 1) sample deciding loss."""
        try:
            delay = self.config.delay_s(*parse_endpoints(packet))
        except ValueError:
            delay = None
        if delay is None:
            outcome, delay = Outcome.PASSED, 0.0
        elif draw < self.config.loss:
            self.counts[Outcome.LOST] += 1
            return Outcome.LOST
        else:
            outcome = Outcome.DELAYED
        self._seq += 1
        heapq.heappush(self._heap, (now + delay, self._seq, packet))
        self.counts[outcome] += 1
        return outcome

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[bytes]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)
