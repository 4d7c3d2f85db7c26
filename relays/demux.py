"""The relay's demux core (sans-I/O, pion/ice ``udp_mux.go``): every routing decision, no I/O.

Client datagram: known address -> ``Forward``; unknown STUN Binding request with a valid ufrag
for this shard -> learn (at most ``max_flows_per_ufrag`` sources per ufrag, rate-limited by a
token bucket), ``Forward`` (or ``AnswerHealth`` for the reserved probe id); unknown
non-STUN -> held behind a bounded, negative-cached Redis ``Lookup``; else ``Drop`` by reason.
Frame from a registered transceiver -> (re)learn its client (Pion: learn only from authenticated
senders) and confirms it, ``SendToClient``. Learned and removed flows queue Redis writes the
shell carries out. Datagrams that waited in the socket past ``max_queue_age`` are stale. Time
comes in as ``now``; the shell owns sockets, the clock and Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.addresses import Addr
from fleet.nodes import HEALTH_TRANSCEIVER_ID
from relays.actions import (
    AnswerHealth,
    DrainState,
    Drop,
    DropReason,
    Forward,
    Local,
    Lookup,
    SendToClient,
)
from relays.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS, Flow, FlowTable
from relays.framing import header_length, parse_header
from relays.limits import TokenBucket
from relays.stun import (
    NotBindingRequest,
    PacketClass,
    classify,
    pack_binding_success,
    parse_binding_request,
)
from relays.tcpmux import (
    AliasPool,
    Authorized,
    SendToTcp,
    TcpDrop,
    TcpLimits,
    TcpTable,
    is_alias,
)
from relays.ufrag import validate_ufrag

DEFAULT_MAX_QUEUE_AGE = 0.5  # seconds a datagram may wait in a socket before it is stale
PENDING_PER_CLIENT = 4  # datagrams held per client while its Redis lookup is in flight


@dataclass(frozen=True, slots=True)
class DemuxConfig:
    shard: int
    keyring: Mapping[int, bytes]
    max_flows: int = DEFAULT_MAX_FLOWS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_lookups: int = 64  # clients with a Redis flow lookup in flight
    negative_ttl: float = 3.0  # seconds a Redis miss is remembered
    drain_grace: float = 600.0  # seconds a drained relay waits for its flows to go quiet
    drain_idle: float = 3.0  # seconds without a packet on any flow: its calls have ended
    max_flows_per_ufrag: int = 8  # a session needs a handful (host, srflx, NAT rebinding)
    learn_rate: float = 200.0  # flows learned from STUN per second (token bucket) ...
    learn_burst: float = 400.0  # ... and at once
    repoll_interval: float = 0.5  # at most one early registry poll per this many seconds
    max_queue_age: float = DEFAULT_MAX_QUEUE_AGE
    worker: int = 0  # SO_REUSEPORT worker index (ICE-TCP aliases name it)
    tcp: TcpLimits = TcpLimits()
    alias_start: int = 0  # where ICE-TCP alias allocation starts (random per process)


_DROPS = {reason: Drop(reason) for reason in DropReason}


class Demux:
    """Flow table, transceiver map, lookup and negative caches, counters, queued Redis writes."""

    def __init__(self, config: DemuxConfig) -> None:
        self.config = config
        self.flows = FlowTable(max_flows=config.max_flows, idle_timeout=config.idle_timeout)
        self.drops: Counter[DropReason] = Counter()
        self.forwarded_in = self.forwarded_out = self.health_answered = 0  # bumped by the shell
        self.forwarded_in_bytes = self.forwarded_out_bytes = 0  # datagram bytes, not headers
        self.learned_stun = self.learned_redis = self.learned_frame = 0
        self.drain_started: float | None = None
        self._transceivers: dict[int, Addr] = {}
        self._by_addr: dict[Addr, int] = {}
        self._writes: dict[Addr, int | None] = {}  # client -> transceiver id, None = delete
        # client -> (the local address it sent to, its datagrams awaiting the lookup)
        self._pending: dict[Addr, tuple[Local, list[bytes]]] = {}
        self._negative: dict[Addr, float] = {}  # client -> time its Redis miss expires
        self._learning = TokenBucket(rate=config.learn_rate, burst=config.learn_burst)
        self._registry_missed = False  # a frame or Binding named a transceiver we do not know
        self._last_repoll: float | None = None
        self.registry_repolls = 0
        self.tcp = TcpTable(
            config.tcp, AliasPool(shard=config.shard, worker=config.worker,
                                  start=config.alias_start), self.authorize_binding,
        )

    def drop(self, reason: DropReason, error: Exception | None = None) -> Drop:
        """Count a drop; the action carries the error text for the shell's debug log."""
        self.drops[reason] += 1
        return _DROPS[reason] if error is None else Drop(reason, str(error))

    def counters(self) -> dict[str, int]:
        """Counters for the heartbeat: forwarding, learning, and drops by reason."""
        counts = {
            "forwarded_in": self.forwarded_in, "forwarded_out": self.forwarded_out,
            "forwarded_in_bytes": self.forwarded_in_bytes,
            "forwarded_out_bytes": self.forwarded_out_bytes,
            "learned_stun": self.learned_stun, "learned_redis": self.learned_redis,
            "learned_frame": self.learned_frame, "flows_evicted": self.flows.evicted,
            "flows_expired": self.flows.expired, "health_answered": self.health_answered,
            "registry_repolls": self.registry_repolls,
        }
        counts.update({f"drop_{r.value}": self.drops[r] for r in DropReason})  # all, even 0
        counts.update(self.tcp.counters())
        return counts

    def fresh(self, received_at: float | None, now: float) -> bool:
        """False (counted ``stale``) for a datagram the kernel queued more than
        ``max_queue_age`` before ``now`` (same clock): after a freeze, old audio replayed in one
        burst only hurts the call. ``None`` (no timestamp) counts as fresh."""
        if received_at is None or now - received_at <= self.config.max_queue_age:
            return True
        self.drops[DropReason.STALE] += 1
        return False

    # client datagrams --------------------------------------------------------------------------

    def on_datagram(
        self, client: Addr, data: bytes | memoryview, now: float, local: Local = None
    ) -> Forward | AnswerHealth | Lookup | Drop:
        """Route one datagram from ``client`` (RFC 7983 first byte, then the Binding's ufrag);
        ``local`` is the relay address it was sent to, where the shell knows it."""
        flow = self.flows.get(client)
        if flow is not None:
            flow.last_seen = now
            if local is not None and local != flow.local:
                self.flows.relocate(flow, local)
            return Forward(flow.header, flow.transceiver, data)
        if not data:
            return self.drop(DropReason.EMPTY)
        if classify(data[0]) is not PacketClass.STUN:
            return self._lookup(client, data, now, local)
        return self._on_binding_request(client, data, now, local)

    def _on_binding_request(
        self, client: Addr, data: bytes | memoryview, now: float, local: Local
    ) -> Forward | AnswerHealth | Drop:
        """Learn a flow from the ufrag of a Binding request (RFC 8445 section 7.2.2 USERNAME)."""
        try:
            server_ufrag, tid = parse_binding_request(data)
        except NotBindingRequest:
            return self.drop(DropReason.STUN_NOT_BINDING)
        except ValueError as exc:
            return self.drop(DropReason.BAD_STUN, exc)
        # A captured Binding replayed from many source addresses must not learn a flow (and a
        # Redis key, and a path to the transceiver) per address, nor evict live flows. Checked
        # before the HMAC: only ufrags that passed it are ever counted.
        if self.flows.ufrag_flows(server_ufrag) >= self.config.max_flows_per_ufrag:
            return self.drop(DropReason.UFRAG_FLOWS_FULL)
        if is_alias(client):  # a UDP flow there would capture an ICE-TCP connection's replies
            return self.drop(DropReason.ALIAS_SOURCE)
        verdict = self._authorize(server_ufrag, tid, client, local)
        if isinstance(verdict, Drop):
            self.drops[verdict.reason] += 1
            return verdict
        if isinstance(verdict, AnswerHealth):
            return verdict
        if not self._learning.take(now):
            return self.drop(DropReason.LEARN_RATE)
        flow = self._learn(client, verdict.transceiver_id, verdict.transceiver, now,
                           ufrag=server_ufrag, local=local)
        self.learned_stun += 1
        return Forward(flow.header, flow.transceiver, data)

    def authorize_binding(
        self, data: bytes | memoryview, client: Addr, now: float
    ) -> Authorized | AnswerHealth | Drop:
        """The UDP rules for a Binding request, without learning or counting a drop: the first
        packet of an ICE-TCP connection (RFC 6544 section 4) must pass them."""
        try:
            server_ufrag, tid = parse_binding_request(data)
        except NotBindingRequest:
            return _DROPS[DropReason.STUN_NOT_BINDING]
        except ValueError as exc:
            return Drop(DropReason.BAD_STUN, str(exc))
        return self._authorize(server_ufrag, tid, client)

    def _authorize(self, server_ufrag: str, tid: bytes, client: Addr, local: Local = None
                   ) -> Authorized | AnswerHealth | Drop:
        """HMAC, shard, health id and registry checks of a server ufrag (no drop counted)."""
        try:
            claims = validate_ufrag(server_ufrag, keys=self.config.keyring)
        except ValueError as exc:
            return Drop(DropReason.BAD_UFRAG, str(exc))
        if claims.shard != self.config.shard:
            return _DROPS[DropReason.WRONG_SHARD]
        if claims.transceiver == HEALTH_TRANSCEIVER_ID:  # the one message the relay answers
            self.health_answered += 1
            return AnswerHealth(client, pack_binding_success(tid, client), local)
        address = self._transceivers.get(claims.transceiver)
        if address is None:
            self._registry_missed = True
            return _DROPS[DropReason.UNKNOWN_TRANSCEIVER]
        return Authorized(server_ufrag, claims.transceiver, address)

    def _learn(self, client: Addr, transceiver_id: int, address: Addr, now: float, *,
               ufrag: str | None = None, confirmed: bool = False, local: Local = None) -> Flow:
        """Learn (or re-point) a flow, queue its Redis write; a full table evicts one first."""
        if len(self.flows) >= self.flows.max_flows and self.flows.get(client) is None:
            self._forget(self.flows.evict())
        flow = self.flows.learn(client, transceiver_id=transceiver_id, transceiver=address,
                                now=now, ufrag=ufrag, confirmed=confirmed, local=local)
        self._writes[client] = transceiver_id
        return flow

    def _forget(self, flow: Flow) -> None:
        """Queue the delete of a removed flow's Redis key (expiry and eviction alike)."""
        # A queued SET for it becomes the DELETE; past the bound (Redis down for long), keys
        # are left to their TTL.
        if flow.client in self._writes or len(self._writes) < 2 * self.config.max_flows:
            self._writes[flow.client] = None

    def _lookup(self, client: Addr, data: bytes | memoryview, now: float, local: Local
                ) -> Lookup | Drop:
        """Hold a datagram from an unknown non-STUN source for a bounded Redis lookup."""
        until = self._negative.get(client)
        if until is not None and until > now:
            return self.drop(DropReason.REDIS_MISS)
        pending = self._pending.get(client)
        if pending is None:
            if len(self._pending) >= self.config.max_lookups:
                return self.drop(DropReason.LOOKUP_BUSY)
            self._pending[client] = (local, [bytes(data)])
        elif len(pending[1]) < PENDING_PER_CLIENT:
            pending[1].append(bytes(data))
        else:
            return self.drop(DropReason.LOOKUP_QUEUE_FULL)
        return Lookup(client)

    # Redis lookups -----------------------------------------------------------------------------

    def pending_lookups(self) -> list[Addr]:
        """Clients whose flow should be read from Redis now."""
        return list(self._pending)

    def on_lookup_result(
        self, clients: list[Addr], values: list[bytes | None], now: float
    ) -> list[Forward]:
        """Learn flows Redis knows (the held datagrams go out in order); negative-cache misses."""
        out: list[Forward] = []
        for client, value in zip(clients, values, strict=True):
            local, held = self._pending.pop(client, (None, []))
            flow = None
            if value is None or not value.isdigit():
                if len(self._negative) < self.config.max_flows:
                    self._negative[client] = now + self.config.negative_ttl
                self.drops[DropReason.REDIS_MISS] += len(held)
            elif (flow := self.flows.get(client)) is None:  # else learned meanwhile
                # Not rate-limited: the key exists only for a flow learned (under the limits)
                # before, e.g. by this relay before a restart.
                address = self._transceivers.get(int(value))
                if address is None:
                    self.drops[DropReason.UNKNOWN_TRANSCEIVER] += len(held)
                    self._registry_missed = True
                else:
                    flow = self._learn(client, int(value), address, now, local=local)
                    self.learned_redis += 1
            if flow is not None:
                out += [Forward(flow.header, flow.transceiver, data) for data in held]
        return out

    def on_lookup_failed(self, clients: list[Addr]) -> None:
        """Redis did not answer: drop what the clients' lookups held."""
        for client in clients:
            self.drops[DropReason.REDIS_DOWN] += len(self._pending.pop(client, (None, []))[1])

    # transceiver frames ------------------------------------------------------------------------

    def on_frame(
        self, source: Addr, data: bytes | memoryview, now: float
    ) -> SendToClient | SendToTcp | Drop:
        """A frame from a registered transceiver (re)learns its client (Pion's rule), goes out."""
        transceiver_id = self._by_addr.get(source)
        if transceiver_id is None:
            self._registry_missed = True
            return self.drop(DropReason.FRAME_UNREGISTERED)
        try:
            header = bytes(data[:header_length(data)])
            flow = self.flows.get_by_header(header)
            if flow is None or flow.transceiver_id != transceiver_id:
                tcp = self.tcp.route(header, transceiver_id)
                if tcp is not None:  # an ICE-TCP connection's alias
                    return tcp
                client, _ = parse_header(data)
                if is_alias(client):  # its connection is gone: never learn it as UDP
                    self.tcp.drops[TcpDrop.GONE] += 1
                    return _DROPS[DropReason.FRAME_TCP_GONE]
                flow = self._learn(client, transceiver_id, source, now, confirmed=True)
                self.learned_frame += 1
        except ValueError as exc:
            return self.drop(DropReason.FRAME_MALFORMED, exc)
        flow.last_seen = now
        if not flow.confirmed:
            self.flows.confirm(flow)
        return flow.send

    # registry, expiry, Redis writes, drain ----------------------------------------------------

    def registry_repoll_due(self, now: float) -> bool:
        """True (at most once per ``repoll_interval``) when a frame or Binding named a
        transceiver missing from the registry: a new one should not wait for the next poll."""
        if not self._registry_missed:
            return False
        if self._last_repoll is not None and now - self._last_repoll < self.config.repoll_interval:
            return False
        self._registry_missed, self._last_repoll = False, now
        self.registry_repolls += 1
        return True

    def set_transceivers(self, table: Mapping[int, Addr]) -> None:
        """Install the registry (``id -> address``); flows of a moved transceiver follow it."""
        if table == self._transceivers:
            return
        old, self._transceivers = self._transceivers, dict(table)
        self._by_addr = {address: tid for tid, address in table.items()}
        for transceiver_id, now_at in table.items():  # TCP connections follow a move too
            if old.get(transceiver_id) not in (None, now_at):
                self.tcp.retarget(transceiver_id, now_at)
        for flow in self.flows:  # whether its frames are accepted may have changed too
            address = table.get(flow.transceiver_id)
            moved = address is not None and old.get(flow.transceiver_id) not in (None, address)
            if moved and address is not None:
                self.flows.move(flow, address)
            else:
                self.flows.notify(flow)

    def routes_frames(self, flow: Flow) -> bool:
        """True when a frame for ``flow`` from its transceiver's address goes straight out to
        the client (``on_frame`` would neither learn nor confirm): a fast path may send it."""
        return flow.confirmed and self._by_addr.get(flow.transceiver) == flow.transceiver_id

    def expire(self, now: float) -> list[Flow]:
        """Expire idle flows (queueing deletes of their Redis keys) and negative-cache entries."""
        gone = self.flows.expire(now)
        for flow in gone:
            self._forget(flow)
        self._negative = {c: until for c, until in self._negative.items() if until > now}
        if not self._pending:
            self._pending = {}  # give back what a burst of lookups grew it to
        return gone

    def refresh(self, since: float) -> None:
        """Queue a re-write (and so a new TTL) of every flow that carried a packet ``since``."""
        for flow in self.flows.active_since(since):
            self._writes.setdefault(flow.client, flow.transceiver_id)

    def take_writes(self) -> dict[Addr, int | None]:
        """The queued flow writes (client -> transceiver id, None = delete); the queue empties."""
        batch, self._writes = self._writes, {}
        return batch

    def restore_writes(self, batch: Mapping[Addr, int | None]) -> None:
        """Put back a batch Redis did not take; entries queued since then win."""
        for client, transceiver_id in batch.items():
            self._writes.setdefault(client, transceiver_id)

    def check_drain(self, requested: bool, now: float) -> DrainState:
        """Drain: keep forwarding until no flow carried a packet for ``drain_idle`` s (its calls
        ended) or ``drain_grace`` passed. A cancelled request resumes serving."""
        if not requested:
            self.drain_started = None
            return DrainState.SERVING
        if self.drain_started is None:
            self.drain_started = now
        quiet = not self.flows.active_since(now - self.config.drain_idle)
        if quiet or now - self.drain_started >= self.config.drain_grace:
            return DrainState.DRAINED
        return DrainState.DRAINING
