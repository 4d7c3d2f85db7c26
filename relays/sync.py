"""The relay's Redis side: registry poll, flow writes and TTL refresh, expiry, heartbeat + drain,
flow lookups. Each runs as its own task on ``fleet.periodic.every``, off the packet path: known
flows keep flowing while Redis is down, and every loop backs off while it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fleet import heartbeats, keys
from fleet.addresses import Addr, canonical_addr, parse_addr
from fleet.periodic import every
from relays.actions import DrainState, Forward
from relays.config import RelayConfig
from relays.demux import Demux

logger = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError)


class RelaySync:
    """Carries out the core's Redis work; ``forward`` sends what a lookup released."""

    def __init__(
        self, config: RelayConfig, core: Demux, forward: Callable[[Forward], None], *,
        public: str, internal: str, internal_v6: bool,
        counters: Callable[[], dict[str, int]] | None = None,
        before_sweep: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.public, self.internal = public, internal  # HOST:PORT as the heartbeat publishes them
        self.internal_v6 = internal_v6  # registry entries are spelled as recvfrom reports them
        self.core = core
        self.redis = aioredis.Redis.from_url(  # fail fast: the loops retry with backoff
            config.redis_url, socket_timeout=config.redis_timeout,
            socket_connect_timeout=config.redis_timeout, retry=Retry(NoBackoff(), 0),
        )
        self.forward = forward
        self.counters = counters or core.counters  # the heartbeat's (the shell adds its own)
        self.before_sweep = before_sweep or (lambda: None)  # brings flows' last_seen up to date
        self.redis_errors = 0
        self.admin = ""  # HOST:PORT of the worker's /metrics endpoint, published for discovery
        self.drained = asyncio.Event()  # set when a drain is complete: serve() returns
        self.lookup_wakeup = asyncio.Event()
        self.registry_wakeup = asyncio.Event()  # set by the shell: poll the registry now
        self._write_lock = asyncio.Lock()  # one pipeline at a time keeps SET/DEL in order
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_refresh = 0.0

    async def start(self) -> None:
        """Load the registry once (an empty set if Redis is down), then start every loop."""
        await self._guarded(self.poll_registry)
        cfg = self.config
        self._last_refresh = asyncio.get_running_loop().time()
        self._tasks = [asyncio.create_task(self._every(interval, work)) for interval, work in (
            (0.0, self.registry_round),  # paced by registry_interval or registry_wakeup
            (cfg.flow_write_interval, self.write_flows),
            (cfg.flow_refresh_interval, self.refresh_flows),
            (cfg.expire_interval, self.expire),
            (cfg.heartbeat_interval, self.heartbeat),
            (0.0, self.lookup_round),  # paced by lookup_wakeup
        )]

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def clear_drain_request(self) -> None:
        """Delete the operator's drain key once the drain is done (a restart starts fresh)."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.delete(keys.drain_key("relay", self.config.shard))

    def _every(
        self, interval: float, work: Callable[[], Awaitable[None]]
    ) -> Coroutine[Any, Any, None]:
        return every(interval, work, errors=REDIS_ERRORS, stopping=lambda: self._closing,
                     on_error=self._count_error)

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except REDIS_ERRORS as exc:
            self._count_error(exc)

    def _count_error(self, exc: BaseException) -> None:
        self.redis_errors += 1
        logger.debug("relay redis error: %s", exc)

    async def registry_round(self) -> None:
        """Poll the registry after ``registry_interval``, or at once when the shell asks."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry_wakeup.wait(), self.config.registry_interval)
        self.registry_wakeup.clear()
        await self.poll_registry()

    async def poll_registry(self) -> None:
        """Reload ``edge:transceivers``; on error the last known set stays in force."""
        raw = await self.redis.hgetall(keys.TRANSCEIVERS_KEY)
        table: dict[int, Addr] = {}
        for key, value in raw.items():
            try:
                text = value.decode() if isinstance(value, bytes) else value
                table[int(key)] = canonical_addr(parse_addr(text), v6=self.internal_v6)
            except ValueError as exc:
                logger.debug("bad transceiver entry %r: %s", key, exc)
        self.core.set_transceivers(table)

    async def write_flows(self) -> None:
        """Write learned flows and delete removed ones in one pipeline."""
        async with self._write_lock:
            batch = self.core.take_writes()
            if not batch:
                return
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for client, transceiver_id in batch.items():
                        key = keys.flow_key(self.config.shard, client)
                        if transceiver_id is None:
                            pipe.delete(key)
                        else:
                            pipe.set(key, transceiver_id, ex=keys.FLOW_TTL)
                    await pipe.execute()
            except REDIS_ERRORS:
                self.core.restore_writes(batch)
                raise

    async def refresh_flows(self) -> None:
        """Re-write (and so re-TTL) every flow that carried packets since the last refresh."""
        now = asyncio.get_running_loop().time()
        self.before_sweep()
        self.core.refresh(self._last_refresh)
        self._last_refresh = now
        await self.write_flows()

    async def expire(self) -> None:
        self.before_sweep()
        self.core.expire(asyncio.get_running_loop().time())
        await self.write_flows()

    async def lookup_round(self) -> None:
        """Resolve pending unknown sources with one pipelined GET."""
        await self.lookup_wakeup.wait()
        self.lookup_wakeup.clear()
        clients = self.core.pending_lookups()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for client in clients:
                    pipe.get(keys.flow_key(self.config.shard, client))
                values = await pipe.execute()
        except REDIS_ERRORS:
            self.core.on_lookup_failed(clients)
            raise
        for action in self.core.on_lookup_result(clients, values,
                                                 asyncio.get_running_loop().time()):
            self.forward(action)

    async def heartbeat(self) -> None:
        """Follow an operator's drain request (``edge:drain:relay:<shard>``), then publish this
        worker's ``RelayHeartbeat`` with a TTL (registry contract)."""
        cfg = self.config
        requested = bool(await self.redis.exists(keys.drain_key("relay", cfg.shard)))
        was_draining = self.core.drain_started is not None
        if requested:
            self.before_sweep()
        state = self.core.check_drain(requested, asyncio.get_running_loop().time())
        if state is not DrainState.SERVING and not was_draining:
            logger.info("relay shard %s: draining", cfg.shard)
        if state is DrainState.DRAINED and not self.drained.is_set():
            logger.info("relay shard %s: drained", cfg.shard)
            self.drained.set()
        beat = heartbeats.RelayHeartbeat(
            shard=cfg.shard, worker=cfg.worker, public=self.public, internal=self.internal,
            pid=os.getpid(), flows=len(self.core.flows), sent_at=time.time(),
            counters={**self.counters(), "redis_errors": self.redis_errors},
            draining=state is not DrainState.SERVING, admin=self.admin,
        )
        key = keys.relay_heartbeat_key(cfg.shard, cfg.worker)
        await self.redis.set(key, beat.to_json(), px=max(1, int(cfg.heartbeat_ttl * 1000)))
