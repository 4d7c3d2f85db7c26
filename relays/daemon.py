"""The relay's asyncio shell: two non-blocking UDP sockets drained from ``loop.add_reader``.

Demux (DESIGN.md, pion/ice ``udp_mux.go``): known client -> forward framed; unknown STUN Binding
request with a valid ufrag for this shard -> learn, forward; unknown non-STUN -> bounded Redis
lookup -> learn or drop. Frames from registered transceivers (re)learn and go to the client.
Redis work (flow writes, TTL refresh, heartbeats, registry polls) runs in background tasks and
never blocks the packet path; known flows keep flowing while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

import redis.asyncio as aioredis
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from health.http import serve_admin
from relays import registry
from relays.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS, Flow, FlowTable
from relays.framing import Addr, header_length, parse_header
from relays.stun import (
    PacketClass,
    classify,
    is_binding_request,
    pack_binding_success,
    parse_server_ufrag,
    transaction_id,
)
from relays.ufrag import HEALTH_TRANSCEIVER_ID, validate_ufrag

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
DRAIN_BATCH = 512  # datagrams per reader callback before yielding to other sockets
PENDING_PER_CLIENT = 4  # datagrams held per client while its Redis lookup is in flight
MAX_BACKOFF = 5.0
REDIS_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything one relay worker needs; built once by ``run_relay``."""

    shard: int
    public: Addr
    internal: Addr
    redis_url: str
    keyring: Mapping[int, bytes]
    worker: int = 0
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_flows: int = DEFAULT_MAX_FLOWS
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 5.0
    registry_interval: float = 1.0  # poll of the ``edge:transceivers`` hash
    flow_write_interval: float = 0.05  # batch of learned-flow writes
    flow_refresh_interval: float = registry.FLOW_TTL / 4
    expire_interval: float = 5.0
    max_lookups: int = 64  # clients with a Redis flow lookup in flight
    negative_ttl: float = 3.0  # seconds a Redis miss is remembered
    redis_timeout: float = 1.0
    socket_buffer: int = 4 * 1024 * 1024
    drain_grace: float = 600.0  # seconds a drained relay waits for its flows to go quiet
    drain_idle: float = 3.0  # seconds without a packet on any flow: its calls have ended
    admin: Addr | None = None  # HOST:PORT of the /livez + /readyz endpoint (worker 0 only)


def bind_udp(addr: Addr, *, buffer: int = 0) -> socket.socket:
    """Return a non-blocking UDP socket bound to ``addr`` with ``SO_REUSEPORT`` (v4 or v6)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF) if buffer else ():
            with contextlib.suppress(OSError):  # capped by net.core.*mem_max: best effort
                sock.setsockopt(socket.SOL_SOCKET, option, buffer)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Relay:
    """One relay worker. ``async with Relay(config) as relay:`` binds, starts, and closes."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.flows = FlowTable(max_flows=config.max_flows, idle_timeout=config.idle_timeout)
        self.drops: Counter[str] = Counter()
        self.forwarded_in = self.forwarded_out = 0
        self.learned_stun = self.learned_redis = self.learned_frame = 0
        self.redis_errors = 0
        self.health_answered = 0
        self.draining = False
        self.drained = asyncio.Event()  # set when a drain is complete: serve() returns
        self._closing = False
        self._drain_started: float | None = None
        self._admin: asyncio.Server | None = None
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self._transceivers: dict[int, Addr] = {}
        self._by_addr: dict[Addr, int] = {}
        self._writes: dict[Addr, int | None] = {}  # client -> transceiver id, None = delete
        self._pending: dict[Addr, list[bytes]] = {}  # client -> datagrams awaiting lookup
        self._negative: dict[Addr, float] = {}  # client -> time its Redis miss expires
        self._lookup_wakeup = asyncio.Event()
        self._write_lock = asyncio.Lock()  # one pipeline at a time keeps SET/DEL in order
        self._tasks: list[asyncio.Task[None]] = []
        self._public: socket.socket | None = None
        self._internal: socket.socket | None = None
        self._redis: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_refresh = 0.0

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._redis = aioredis.Redis.from_url(
            cfg.redis_url, socket_timeout=cfg.redis_timeout,
            socket_connect_timeout=cfg.redis_timeout, retry=Retry(NoBackoff(), 0),
        )
        try:
            self._public = bind_udp(cfg.public, buffer=cfg.socket_buffer)
            self._internal = bind_udp(cfg.internal, buffer=cfg.socket_buffer)
        except OSError:
            await self.close()
            raise
        await self._guarded(self.poll_registry)  # first load; an empty set if Redis is down
        loop.add_reader(self._public.fileno(), self._on_public_readable)
        loop.add_reader(self._internal.fileno(), self._on_internal_readable)
        self._tasks = [
            asyncio.create_task(self._every(cfg.registry_interval, self.poll_registry)),
            asyncio.create_task(self._every(cfg.flow_write_interval, self.write_flows)),
            asyncio.create_task(self._every(cfg.flow_refresh_interval, self._refresh_flows)),
            asyncio.create_task(self._every(cfg.expire_interval, self._expire_now)),
            asyncio.create_task(self._every(cfg.heartbeat_interval, self.heartbeat)),
            asyncio.create_task(self._lookup_loop()),
        ]
        self._last_refresh = loop.time()
        if cfg.admin is not None and cfg.worker == 0:
            self._admin = await serve_admin(cfg.admin, ready=lambda: not self.draining)
        logger.info(
            "relay shard %s worker %s: public %s internal %s", cfg.shard, cfg.worker,
            registry.format_addr(self.public_addr), registry.format_addr(self.internal_addr),
        )

    async def close(self) -> None:
        """Remove readers, cancel every task, close Redis and both sockets. Idempotent."""
        self._closing = True
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for sock in (self._public, self._internal):
            if sock is not None and self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.aclose()
            self._redis = None
        for sock in (self._public, self._internal):
            if sock is not None:
                sock.close()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def public_addr(self) -> Addr:
        assert self._public is not None
        return _addr(self._public.getsockname())

    @property
    def internal_addr(self) -> Addr:
        assert self._internal is not None
        return _addr(self._internal.getsockname())

    def counters(self) -> dict[str, int]:
        """Counters for the heartbeat: forwarding, learning, and drops by reason."""
        counts = {
            "forwarded_in": self.forwarded_in, "forwarded_out": self.forwarded_out,
            "learned_stun": self.learned_stun, "learned_redis": self.learned_redis,
            "learned_frame": self.learned_frame, "redis_errors": self.redis_errors,
            "flows_evicted": self.flows.evicted, "flows_expired": self.flows.expired,
            "health_answered": self.health_answered,
        }
        counts.update({f"drop_{reason}": n for reason, n in sorted(self.drops.items())})
        return counts

    # packet path (never raises: the core's ValueError is counted and dropped) ----------------

    def _on_public_readable(self) -> None:
        assert self._public is not None and self._loop is not None
        recv, view, get = self._public.recvfrom_into, self._view, self.flows.get
        now = self._loop.time()
        for _ in range(DRAIN_BATCH):
            try:
                size, source = recv(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                self._drop("recv_error", exc)
                continue
            client = (source[0], source[1])
            flow = get(client)
            if flow is not None:
                flow.last_seen = now
                self._to_transceiver(flow, view[:size])
            else:
                self._on_unknown(client, view[:size], now)

    def _to_transceiver(self, flow: Flow, payload: memoryview | bytes) -> None:
        assert self._internal is not None
        try:
            self._internal.sendmsg([flow.header, payload], [], 0, flow.transceiver)
        except OSError as exc:  # BlockingIOError: send buffer full, drop like a router
            self._drop("send_error", exc)
            return
        self.forwarded_in += 1

    def _on_unknown(self, client: Addr, data: memoryview, now: float) -> None:
        """Unknown source: route a Binding request on its ufrag, else look the flow up."""
        if not data:
            self._drop("empty")
        elif classify(data[0]) is not PacketClass.STUN:
            self._lookup(client, data, now)
        elif not is_binding_request(data):
            self._drop("stun_not_binding")
        else:
            self._on_binding_request(client, data, now)

    def _on_binding_request(self, client: Addr, data: memoryview, now: float) -> None:
        """Learn a flow from the ufrag of a Binding request (RFC 8445 section 7.2.2 USERNAME)."""
        try:
            server_ufrag = parse_server_ufrag(data)
        except ValueError as exc:
            self._drop("bad_stun", exc)
            return
        try:
            claims = validate_ufrag(server_ufrag, keys=self.config.keyring)
        except ValueError as exc:
            self._drop("bad_ufrag", exc)
            return
        if claims.shard != self.config.shard:
            self._drop("wrong_shard")
        elif claims.transceiver == HEALTH_TRANSCEIVER_ID:
            self._answer_health(client, data)  # the one STUN message the relay answers
        elif (flow := self._learn(client, claims.transceiver, now)) is not None:
            self.learned_stun += 1
            self._to_transceiver(flow, data)

    def _answer_health(self, client: Addr, data: memoryview) -> None:
        """Answer a health probe with a Binding success (RFC 8489 section 14.2); learn nothing."""
        assert self._public is not None
        try:
            self._public.sendto(pack_binding_success(transaction_id(data), client), client)
        except (OSError, ValueError) as exc:
            self._drop("send_error", exc)
            return
        self.health_answered += 1

    def _learn(self, client: Addr, transceiver_id: int, now: float) -> Flow | None:
        address = self._transceivers.get(transceiver_id)
        if address is None:
            self._drop("unknown_transceiver")
            return None
        flow = self.flows.learn(client, transceiver_id=transceiver_id, transceiver=address, now=now)
        self._writes[client] = transceiver_id
        return flow

    def _lookup(self, client: Addr, data: memoryview, now: float) -> None:
        """Queue a bounded Redis lookup for an unknown non-STUN source (negative-cached)."""
        until = self._negative.get(client)
        if until is not None and until > now:
            self._drop("redis_miss")
            return
        held = self._pending.get(client)
        if held is None:
            if len(self._pending) >= self.config.max_lookups:
                self._drop("lookup_busy")
                return
            self._pending[client] = [bytes(data)]
            self._lookup_wakeup.set()
        elif len(held) < PENDING_PER_CLIENT:
            held.append(bytes(data))
        else:
            self._drop("lookup_queue_full")

    def _on_internal_readable(self) -> None:
        assert self._internal is not None and self._loop is not None
        recv, view = self._internal.recvfrom_into, self._view
        now = self._loop.time()
        for _ in range(DRAIN_BATCH):
            try:
                size, source = recv(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop("recv_error", exc)
                continue
            self._on_frame((source[0], source[1]), view[:size], now)

    def _on_frame(self, source: Addr, data: memoryview, now: float) -> None:
        """A frame from a registered transceiver (re)learns its client (Pion's rule), goes out."""
        transceiver_id = self._by_addr.get(source)
        if transceiver_id is None:
            self._drop("frame_unregistered")
            return
        try:
            offset = header_length(data)
            flow = self.flows.get_by_header(bytes(data[:offset]))
            if flow is None or flow.transceiver_id != transceiver_id:
                client, offset = parse_header(data)
                flow = self.flows.learn(
                    client, transceiver_id=transceiver_id, transceiver=source, now=now
                )
                self._writes[client] = transceiver_id
                self.learned_frame += 1
        except ValueError as exc:
            self._drop("frame_malformed", exc)
            return
        flow.last_seen = now
        assert self._public is not None
        try:
            self._public.sendto(data[offset:], flow.client)
        except OSError as exc:
            self._drop("send_error", exc)
            return
        self.forwarded_out += 1

    def _drop(self, reason: str, error: Exception | None = None) -> None:
        self.drops[reason] += 1
        if error is not None:
            logger.debug("drop %s: %s", reason, error)

    # background Redis work -------------------------------------------------------------------

    async def _every(self, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` every ``interval`` s; on Redis errors back off up to MAX_BACKOFF."""
        delay = interval
        while not self._closing:  # redis-py may turn our cancel into a RedisError: stop anyway
            await asyncio.sleep(delay)
            ok = await self._guarded(work)
            delay = interval if ok else min(max(delay * 2, 0.1), MAX_BACKOFF)

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> bool:
        try:
            await work()
        except REDIS_ERRORS as exc:
            self.redis_errors += 1
            logger.debug("redis error in %s: %s", getattr(work, "__name__", work), exc)
            return False
        return True

    async def poll_registry(self) -> None:
        """Reload ``edge:transceivers``; on error the last known set stays in force."""
        assert self._redis is not None
        raw = await self._redis.hgetall(registry.TRANSCEIVERS_KEY)
        v6 = self._internal is not None and self._internal.family == socket.AF_INET6
        table: dict[int, Addr] = {}
        for key, value in raw.items():
            try:
                text = value.decode() if isinstance(value, bytes) else value
                table[int(key)] = _canonical(registry.parse_addr(text), v6=v6)
            except ValueError as exc:
                logger.debug("bad transceiver entry %r: %s", key, exc)
        for transceiver_id, address in table.items():  # a restarted transceiver moved
            old = self._transceivers.get(transceiver_id)
            if old is not None and old != address:
                for flow in self.flows:
                    if flow.transceiver_id == transceiver_id:
                        flow.transceiver = address
        self._transceivers = table
        self._by_addr = {address: tid for tid, address in table.items()}

    async def write_flows(self) -> None:
        """Write learned flows and delete expired ones in one pipeline."""
        if not self._writes:
            return
        assert self._redis is not None
        async with self._write_lock:
            await self._write_batch(self._redis)

    async def _write_batch(self, redis_client: aioredis.Redis) -> None:
        batch, self._writes = self._writes, {}
        try:
            async with redis_client.pipeline(transaction=False) as pipe:
                for client, transceiver_id in batch.items():
                    key = registry.flow_key(self.config.shard, client)
                    if transceiver_id is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, transceiver_id, ex=registry.FLOW_TTL)
                await pipe.execute()
        except REDIS_ERRORS:
            for client, transceiver_id in batch.items():  # newer entries win
                self._writes.setdefault(client, transceiver_id)
            raise

    async def _refresh_flows(self) -> None:
        """Re-write (and so re-TTL) every flow that carried packets since the last refresh."""
        assert self._loop is not None
        now = self._loop.time()
        for flow in self.flows.active_since(self._last_refresh):
            self._writes.setdefault(flow.client, flow.transceiver_id)
        self._last_refresh = now
        await self.write_flows()

    async def _expire_now(self) -> None:
        assert self._loop is not None
        self.expire_idle(self._loop.time())
        await self.write_flows()

    def expire_idle(self, now: float) -> list[Flow]:
        """Expire idle flows and negative-cache entries; queue deletes of their Redis keys."""
        gone = self.flows.expire(now)
        for flow in gone:
            if len(self._writes) < 2 * self.config.max_flows:  # keys have a TTL anyway
                self._writes[flow.client] = None
        self._negative = {c: until for c, until in self._negative.items() if until > now}
        return gone

    async def _lookup_loop(self) -> None:
        """Resolve pending unknown sources with one pipelined GET per round."""
        assert self._redis is not None and self._loop is not None
        delay = 0.0
        while not self._closing:
            await self._lookup_wakeup.wait()
            self._lookup_wakeup.clear()
            clients = list(self._pending)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for client in clients:
                        pipe.get(registry.flow_key(self.config.shard, client))
                    values = await pipe.execute()
            except REDIS_ERRORS as exc:
                self.redis_errors += 1
                logger.debug("redis lookup failed: %s", exc)
                for client in clients:
                    self.drops["redis_down"] += len(self._pending.pop(client, ()))
                delay = min(max(delay * 2, 0.1), MAX_BACKOFF)
                await asyncio.sleep(delay)
                continue
            delay = 0.0
            self._resolve(clients, values, self._loop.time())

    def _resolve(self, clients: list[Addr], values: list[bytes | None], now: float) -> None:
        for client, value in zip(clients, values, strict=True):
            held = self._pending.pop(client, [])
            flow = None
            if value is None or not value.isdigit():
                if len(self._negative) < self.config.max_flows:
                    self._negative[client] = now + self.config.negative_ttl
                self.drops["redis_miss"] += len(held)
            elif (flow := self.flows.get(client)) is not None:
                pass  # learned meanwhile from STUN or a frame
            elif (flow := self._learn(client, int(value), now)) is not None:
                self.learned_redis += 1
            if flow is not None:
                for data in held:
                    self._to_transceiver(flow, data)

    async def heartbeat(self) -> None:
        """Publish this worker's ``RelayHeartbeat`` with a TTL (registry contract); follow an
        operator's drain request (``edge:drain:relay:<shard>``)."""
        assert self._redis is not None and self._loop is not None
        cfg = self.config
        requested = await self._redis.exists(registry.drain_key("relay", cfg.shard))
        self._check_drain(bool(requested), self._loop.time())
        beat = registry.RelayHeartbeat(
            shard=cfg.shard, worker=cfg.worker, public=registry.format_addr(self.public_addr),
            internal=registry.format_addr(self.internal_addr), pid=os.getpid(),
            flows=len(self.flows), counters=self.counters(), sent_at=time.time(),
            draining=self.draining,
        )
        key = registry.relay_heartbeat_key(cfg.shard, cfg.worker)
        await self._redis.set(key, beat.to_json(), px=max(1, int(cfg.heartbeat_ttl * 1000)))


    def _check_drain(self, requested: bool, now: float) -> None:
        """Drain: keep forwarding until no flow carried a packet for ``drain_idle`` s (its calls
        ended) or ``drain_grace`` passed, then set ``drained``. A cancelled request resumes."""
        if not requested:
            self.draining, self._drain_started = False, None
            return
        if self._drain_started is None:
            logger.info("relay shard %s: draining", self.config.shard)
            self.draining, self._drain_started = True, now
        quiet = not self.flows.active_since(now - self.config.drain_idle)
        if quiet or now - self._drain_started >= self.config.drain_grace:
            logger.info("relay shard %s: drained (%s)", self.config.shard,
                        "flows quiet" if quiet else "grace period over")
            self.drained.set()


def _addr(sockname: tuple[str, int] | tuple[str, int, int, int]) -> Addr:
    return sockname[0], sockname[1]


def _canonical(address: Addr, *, v6: bool) -> Addr:
    """Spell ``address`` as ``recvfrom`` will report it (v4-mapped on a v6 socket)."""
    ip = ipaddress.ip_address(address[0])
    if v6 and ip.version == 4:
        return f"::ffff:{ip}", address[1]
    mapped = getattr(ip, "ipv4_mapped", None)
    if not v6 and mapped is not None:
        return str(mapped), address[1]
    return str(ip), address[1]


def run(config: RelayConfig) -> None:
    """Serve on uvloop: the same drain loop, cheaper wakeups (bench: -7 us per traversal)."""
    uvloop.run(serve(config))


async def serve(config: RelayConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run one relay worker until SIGINT/SIGTERM (or cancellation), then close it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)  # main thread only
            handled.append(signum)
    try:
        async with Relay(config) as relay:
            if ready is not None:
                ready.set()
            stopped = asyncio.create_task(stop.wait())
            drained = asyncio.create_task(relay.drained.wait())
            await asyncio.wait((stopped, drained), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            drained.cancel()
            if relay.drained.is_set() and relay._redis is not None:
                with contextlib.suppress(*REDIS_ERRORS):  # done: a restart starts fresh
                    await relay._redis.delete(registry.drain_key("relay", config.shard))
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    logger.info("relay shard %s worker %s stopped", config.shard, config.worker)
