"""The relay's flow table: client ip:port -> transceiver, bounded, with idle expiry.

Pure: time comes in as ``now``. One dict keyed by client address (plus an index by
precomputed frame header, for the transceiver->client path); the only removal path is
``FlowTable.remove`` (expiry and eviction go through it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from relays.framing import Addr, pack_header

CONSENT_TIMEOUT = 30.0  # RFC 7675 section 5.1: consent expires after 30 s without a response
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_FLOWS = 200_000


@dataclass(slots=True, eq=False)
class Flow:
    """One learned route. ``header`` is the precomputed frame header naming the client."""

    client: Addr
    transceiver_id: int
    transceiver: Addr
    header: bytes
    last_seen: float


class FlowTable:
    """Client address -> Flow. When full, the oldest-learned flow is evicted (O(1))."""

    def __init__(
        self, *, max_flows: int = DEFAULT_MAX_FLOWS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        if idle_timeout < CONSENT_TIMEOUT:
            raise ValueError("idle timeout shorter than ICE consent")
        if max_flows < 1:
            raise ValueError("max_flows must be positive")
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._flows: dict[Addr, Flow] = {}
        self._by_header: dict[bytes, Flow] = {}
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, client: Addr) -> Flow | None:
        """Return the flow for ``client`` or None. Callers touch ``last_seen`` themselves."""
        return self._flows.get(client)

    def get_by_header(self, header: bytes) -> Flow | None:
        """Return the flow whose frame header is ``header`` (saves decoding the address)."""
        return self._by_header.get(header)

    def learn(self, client: Addr, *, transceiver_id: int, transceiver: Addr, now: float) -> Flow:
        """Insert or re-point the flow for ``client``; evict the oldest flow when full."""
        flow = self._flows.get(client)
        if flow is not None:
            flow.transceiver_id, flow.transceiver, flow.last_seen = transceiver_id, transceiver, now
            return flow
        if len(self._flows) >= self.max_flows:
            self.remove(next(iter(self._flows)))
            self.evicted += 1
        flow = Flow(client, transceiver_id, transceiver, pack_header(client), now)
        self._flows[client] = flow
        self._by_header[flow.header] = flow
        return flow

    def remove(self, client: Addr) -> Flow | None:
        """Remove and return the flow for ``client`` (the one removal path)."""
        flow = self._flows.pop(client, None)
        if flow is not None:
            del self._by_header[flow.header]
        return flow

    def expire(self, now: float) -> list[Flow]:
        """Remove and return every flow idle for longer than ``idle_timeout``."""
        deadline = now - self.idle_timeout
        stale = [flow for flow in self._flows.values() if flow.last_seen < deadline]
        for flow in stale:
            self.remove(flow.client)
        self.expired += len(stale)
        return stale

    def remove_transceiver(self, transceiver_id: int) -> list[Flow]:
        """Remove and return every flow that points at ``transceiver_id``."""
        gone = [f for f in self._flows.values() if f.transceiver_id == transceiver_id]
        for flow in gone:
            self.remove(flow.client)
        return gone

    def active_since(self, since: float) -> list[Flow]:
        """Flows that carried a packet at or after ``since`` (to refresh their Redis copy)."""
        return [flow for flow in self._flows.values() if flow.last_seen >= since]
