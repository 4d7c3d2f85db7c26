"""The relay's flow table: client ip:port -> transceiver, bounded, with idle expiry.

Pure: time comes in as ``now``. One dict keyed by client address, plus indexes: by precomputed
frame header (the transceiver->client path), unconfirmed flows in learning order (eviction), and
flows per server ufrag (the learning bound). The only removal path is ``FlowTable.remove``
(expiry and eviction go through it); the dicts are rebuilt when they shrank to a quarter, since
a CPython dict never gives back the memory of deleted keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fleet.addresses import Addr
from relays.actions import Local, SendToClient
from relays.framing import pack_header

CONSENT_TIMEOUT = 30.0  # RFC 7675 section 5.1: consent expires after 30 s without a response
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_FLOWS = 200_000


@dataclass(slots=True, eq=False)
class Flow:
    """One learned route. ``header`` is the precomputed frame header naming the client, ``send``
    the precomputed action for the frames coming back (no allocation per packet), ``local`` the
    relay address the client talks to (``relays.actions.Local``; replies leave from it)."""

    client: Addr
    transceiver_id: int
    transceiver: Addr
    header: bytes
    last_seen: float
    send: SendToClient
    ufrag: str | None = None  # the server ufrag it was learned from (STUN), else None
    confirmed: bool = False  # a frame from its transceiver came back for it
    local: Local = None  # shared by every flow to the same address (the shell interns it)


class FlowWatcher(Protocol):
    """Told of every change to the table (the shell mirrors it into the C fast path)."""

    def flow_changed(self, flow: Flow) -> None: ...

    def flow_removed(self, flow: Flow) -> None: ...


class FlowTable:
    """Client address -> Flow. When full, the newest unconfirmed flow is evicted, else the
    oldest-learned one (O(1)): a flood of new sources cannot push out flows carrying calls."""

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
        self._unconfirmed: dict[Addr, Flow] = {}  # in learning order: the newest is evicted
        self._per_ufrag: dict[str, int] = {}
        self._peak = 0  # largest size since the dicts were last rebuilt
        self.evicted = 0
        self.expired = 0
        self.watcher: FlowWatcher | None = None

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

    def ufrag_flows(self, ufrag: str) -> int:
        """How many flows were learned from ``ufrag`` and are still in the table."""
        return self._per_ufrag.get(ufrag, 0)

    def learn(
        self, client: Addr, *, transceiver_id: int, transceiver: Addr, now: float,
        ufrag: str | None = None, confirmed: bool = False, local: Local = None,
    ) -> Flow:
        """Insert or re-point the flow for ``client``; evict (``evict``) when full. ``local``
        None (a frame learned it, or the socket is not a wildcard) keeps what the flow had."""
        flow = self._flows.get(client)
        if flow is not None:
            flow.transceiver_id, flow.transceiver, flow.last_seen = transceiver_id, transceiver, now
            if local is not None and local != flow.local:
                flow.local, flow.send = local, SendToClient(client, len(flow.header), local)
            if confirmed:
                flow.confirmed = True
                self._unconfirmed.pop(client, None)
            self.notify(flow)
            return flow
        if len(self._flows) >= self.max_flows:
            self.evict()
        header = pack_header(client)
        flow = Flow(client, transceiver_id, transceiver, header, now,
                    SendToClient(client, len(header), local), ufrag, confirmed, local)
        self._flows[client] = flow
        self._by_header[header] = flow
        if not confirmed:
            self._unconfirmed[client] = flow
        if ufrag is not None:
            self._per_ufrag[ufrag] = self._per_ufrag.get(ufrag, 0) + 1
        self._peak = max(self._peak, len(self._flows))
        self.notify(flow)
        return flow

    def confirm(self, flow: Flow) -> None:
        """Mark ``flow`` as carrying traffic from its transceiver: evicted last."""
        flow.confirmed = True
        self._unconfirmed.pop(flow.client, None)
        self.notify(flow)

    def relocate(self, flow: Flow, local: Local) -> None:
        """The client now talks to the relay's ``local`` address: replies leave from there."""
        flow.local, flow.send = local, SendToClient(flow.client, len(flow.header), local)
        self.notify(flow)

    def move(self, flow: Flow, transceiver: Addr) -> None:
        """Point ``flow`` at its transceiver's new address."""
        flow.transceiver = transceiver
        self.notify(flow)

    def notify(self, flow: Flow) -> None:
        """Tell the watcher that ``flow`` (or what its routing depends on) changed."""
        if self.watcher is not None:
            self.watcher.flow_changed(flow)

    def evict(self) -> Flow:
        """Remove and return the newest unconfirmed flow, else the oldest learned one."""
        if self._unconfirmed:
            client = next(reversed(self._unconfirmed))
        else:
            client = next(iter(self._flows))
        flow = self.remove(client)
        assert flow is not None
        self.evicted += 1
        return flow

    def remove(self, client: Addr) -> Flow | None:
        """Remove and return the flow for ``client`` (the one removal path)."""
        flow = self._flows.pop(client, None)
        if flow is None:
            return None
        del self._by_header[flow.header]
        self._unconfirmed.pop(client, None)
        if flow.ufrag is not None:
            left = self._per_ufrag.pop(flow.ufrag) - 1
            if left:
                self._per_ufrag[flow.ufrag] = left
        if self.watcher is not None:
            self.watcher.flow_removed(flow)
        return flow

    def expire(self, now: float) -> list[Flow]:
        """Remove and return every flow idle for longer than ``idle_timeout``."""
        deadline = now - self.idle_timeout
        stale = [flow for flow in self._flows.values() if flow.last_seen < deadline]
        for flow in stale:
            self.remove(flow.client)
        self.expired += len(stale)
        if len(self._flows) <= self._peak // 4:
            self._rebuild()
        return stale

    def _rebuild(self) -> None:
        """Copy every dict so its memory matches its size again (order is kept)."""
        self._flows = dict(self._flows)
        self._by_header = dict(self._by_header)
        self._unconfirmed = dict(self._unconfirmed)
        self._per_ufrag = dict(self._per_ufrag)
        self._peak = len(self._flows)

    def remove_transceiver(self, transceiver_id: int) -> list[Flow]:
        """Remove and return every flow that points at ``transceiver_id``."""
        gone = [f for f in self._flows.values() if f.transceiver_id == transceiver_id]
        for flow in gone:
            self.remove(flow.client)
        return gone

    def active_since(self, since: float) -> list[Flow]:
        """Flows that carried a packet at or after ``since`` (to refresh their Redis copy)."""
        return [flow for flow in self._flows.values() if flow.last_seen >= since]
