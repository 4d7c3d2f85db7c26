"""The transceiver daemon: one UDP socket, the sessions on it, control, heartbeat, registry."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from channels.db import database_sync_to_async

from fleet.addresses import Addr, format_addr
from fleet.admin_http import serve_admin
from fleet.heartbeats import TransceiverHeartbeat
from fleet.keys import (
    TRANSCEIVERS_KEY,
    drain_key,
    transceiver_heartbeat_key,
    transceiver_sessions_key,
)
from fleet.signals import wait_until_stopped
from fleet.sockets import bind_udp
from transceivers import aiortc_hook, lean_audio, lean_rtp, speedups
from transceivers.agents import AgentFactory, EchoAgent
from transceivers.background import BackgroundTasks
from transceivers.control_server import ControlServer
from transceivers.dtls import DEFAULT_RETRANSMIT, CertificateKeeper, RetransmitPolicy
from transceivers.metrics import (
    AudioSampler,
    TransceiverCollector,
    TransceiverMetrics,
    TransceiverSnapshot,
    measure_loop_lag,
)
from transceivers.mux import DropReason as MuxDropReason
from transceivers.reporting import ChannelEventSink, EventSink, SessionReporter
from transceivers.services import transceiver_register
from transceivers.sessions import SessionManager
from transceivers.shared_socket import SOCKET_BUFFER, IceMux

logger = logging.getLogger(__name__)

TASK_STOP_TIMEOUT = 2.0  # seconds close() waits for cancelled tasks before moving on
DRAIN_POLL = 0.1  # seconds between checks of a draining transceiver's live sessions
REASSERT_RETRY = 0.2  # seconds between heartbeats while Redis fails (re-assert soon after)
REDIS_SILENCE_NOT_READY = 3  # heartbeat intervals without a Redis success: not ready


@dataclass(frozen=True)
class TransceiverConfig:
    transceiver_id: int
    bind_host: str
    bind_port: int
    redis_url: str
    region_code: str | None = None  # None: no DB row (tests); else upsert Transceiver
    capacity: int = 200
    connect_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 5.0
    drain_grace: float = 600.0  # seconds a draining transceiver lets live calls run
    admin: Addr | None = None  # HOST:PORT of the /livez, /readyz, /metrics endpoint
    advertise: Addr | None = None  # what relays frame to (registry, DB row); None: the bound one
    dtls_retransmit: float = DEFAULT_RETRANSMIT.initial  # first DTLS flight resend (s); 0: 1 s
    shared_certificate: bool = True  # one DTLS certificate for all sessions (transceivers.dtls)


class Transceiver:
    """A running transceiver; ``async with Transceiver(config, reporter=...) as t:`` in tests."""

    def __init__(
        self, config: TransceiverConfig, *, reporter: SessionReporter,
        agent_factory: AgentFactory = EchoAgent, events: EventSink | None = None,
    ) -> None:
        self.config = config
        self.incarnation = secrets.token_hex(8)  # this process: sessions die with it
        self._agent_factory = agent_factory
        self._reporter = reporter
        self._events = events or ChannelEventSink()
        self._redis: aioredis.Redis | None = None
        self._tasks = BackgroundTasks()
        self.mux: IceMux | None = None
        self.sessions: SessionManager | None = None
        self.loop_lag_ms = 0.0
        self._stopping = False
        self.drained = asyncio.Event()  # a drain is complete: serve() returns, the process exits
        self.drain_reason: str | None = None
        self._drain_requested = False  # by the operator's Redis key (SIGTERM cannot be undone)
        self._drain_task: asyncio.Task[None] | None = None
        self._admin: asyncio.Server | None = None
        self._redis_ok_at: float | None = None  # loop time of the last heartbeat Redis took
        self._audio = AudioSampler()
        self.metrics = TransceiverMetrics(config.transceiver_id)  # this process's registry
        self.metrics.registry.register(TransceiverCollector(self.snapshot))
        self.admin_address = ""  # HOST:PORT of /livez /readyz /metrics once listening

    @property
    def address(self) -> Addr:
        assert self.mux is not None, "not started"
        return self.mux.address

    @property
    def advertised(self) -> Addr:
        """The address relays frame to and accept frames from: ``advertise`` or the bound one."""
        return self.config.advertise or self.address

    async def start(self) -> None:
        initial = self.config.dtls_retransmit
        aiortc_hook.install(RetransmitPolicy(initial=initial) if initial > 0 else None)
        speedups.install()
        lean_rtp.install()
        lean_audio.install()
        sock = bind_udp((self.config.bind_host, self.config.bind_port), buffer=SOCKET_BUFFER)
        self.mux = IceMux(sock)
        self.mux.start()
        self.sessions = SessionManager(
            mux=self.mux, agent_factory=self._agent_factory, reporter=self._reporter,
            events=self._events, connect_timeout=self.config.connect_timeout,
            capacity=self.config.capacity, incarnation=self.incarnation, metrics=self.metrics,
            certificates=CertificateKeeper() if self.config.shared_certificate else None,
        )
        host, port = self.advertised
        if self.config.region_code is not None:
            await database_sync_to_async(transceiver_register)(
                transceiver_id=self.config.transceiver_id, region_code=self.config.region_code,
                bind_host=host, bind_port=port, capacity=self.config.capacity,
            )
        if self.config.admin is not None:  # before the first heartbeat, which names it
            self._admin = await serve_admin(
                self.config.admin, ready=self.ready, reason=self.not_ready_reason,
                registry=self.metrics.registry, before_scrape=self._sample_audio,
            )
            self.admin_address = format_addr(self._admin.sockets[0].getsockname()[:2])
        self._redis = aioredis.Redis.from_url(self.config.redis_url)
        await self._write_heartbeat()
        self._tasks.spawn(ControlServer(
            transceiver_id=self.config.transceiver_id, redis_url=self.config.redis_url,
            sessions=self.sessions, tasks=self._tasks, status=self.status,
            stopping=lambda: self._stopping,
        ).run())
        self._tasks.spawn(self._heartbeat_loop())
        self._tasks.spawn(measure_loop_lag(self.metrics.loop_lag.observe,
                                           stopping=lambda: self._stopping))
        logger.info("transceiver %s on %s advertised as %s", self.config.transceiver_id,
                    format_addr(self.address), format_addr((host, port)))

    async def close(self) -> None:
        """Stop taking requests, close every session, leave the registry, close the socket."""
        self._stopping = True
        if self._admin is not None:
            self._admin.close()
        if self.sessions is not None:
            self.sessions.draining = True
        await self._tasks.cancel_all(timeout=TASK_STOP_TIMEOUT)
        if self.sessions is not None:
            await self.sessions.close_all(reason="transceiver shutting down")
        if self._redis is not None:
            try:
                await self._leave_redis(self._redis)
            except (OSError, aioredis.RedisError) as exc:  # its entries expire or get replaced
                logger.warning("transceiver %s left Redis uncleaned: %s",
                               self.config.transceiver_id, exc)
            await self._redis.aclose()
            self._redis = None
        if self.mux is not None:
            self.mux.close()
        logger.info("transceiver %s stopped", self.config.transceiver_id)

    async def _leave_redis(self, client: aioredis.Redis) -> None:
        transceiver_id = self.config.transceiver_id
        await client.hdel(TRANSCEIVERS_KEY, str(transceiver_id))
        await client.delete(transceiver_heartbeat_key(transceiver_id),
                            transceiver_sessions_key(transceiver_id))
        if self.drained.is_set() and self._drain_requested:  # done: a restart starts fresh
            await client.delete(drain_key("transceiver", transceiver_id))

    async def __aenter__(self) -> Transceiver:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def status(self) -> dict[str, Any]:
        assert self.sessions is not None
        return {
            "transceiver_id": self.config.transceiver_id,
            "incarnation": self.incarnation,
            "sessions": len(self.sessions),
            "connected": self.sessions.connected,
            "capacity": self.sessions.capacity,
            "loop_lag_ms": round(self.loop_lag_ms, 3),
            "draining": self.sessions.draining,
            "drops": {reason.value: n for reason, n in self.mux.table.drops.items()}
            if self.mux else {},
        }

    def snapshot(self) -> TransceiverSnapshot:
        """What a scrape reads (``transceivers.metrics``): sessions, socket counters, loss."""
        sessions, mux = self.sessions, self.mux
        live = set(sessions.session_ids()) if sessions is not None else set()
        return TransceiverSnapshot(
            transceiver_id=self.config.transceiver_id, sessions=len(live),
            connected=sessions.connected if sessions is not None else 0,
            capacity=self.config.capacity,
            draining=sessions.draining if sessions is not None else False,
            packets_in=mux.received if mux else 0, packets_out=mux.sent if mux else 0,
            send_errors=mux.send_errors if mux else 0,
            drops={r.value: mux.table.drops[r] if mux else 0 for r in MuxDropReason},
            lean_in=lean_rtp.taken,
            audio={sid: loss for sid, loss in self._audio.latest.items() if sid in live},
        )

    async def _sample_audio(self) -> None:
        if self.sessions is not None:
            await self._audio.sample((s.session_id, s.pc) for s in self.sessions.live())

    def ready(self) -> bool:
        """Readiness: started, taking new sessions and reaching Redis (liveness is the loop
        answering at all: a Redis outage must not get the process restarted)."""
        return self.not_ready_reason() == ""

    def not_ready_reason(self) -> str:
        """Why this transceiver takes no new sessions now; empty when it does."""
        if self.sessions is None or self._redis_ok_at is None:
            return "starting"
        if self._stopping:
            return "stopping"
        if self.sessions.draining:
            return "draining"
        silent = asyncio.get_running_loop().time() - self._redis_ok_at
        if silent > REDIS_SILENCE_NOT_READY * self.config.heartbeat_interval:
            return f"redis unreachable for {silent:.1f}s"
        return ""

    # drain: no new sessions, live ones run until they end or the grace period is over

    def drain(self, reason: str) -> None:
        """Start draining (idempotent); ``drained`` is set once no session is left."""
        assert self.sessions is not None
        if self._drain_task is not None:
            return
        logger.info("transceiver %s draining (%s): %d live sessions", self.config.transceiver_id,
                    reason, len(self.sessions))
        self.drain_reason = reason
        self.sessions.draining = True
        self._drain_task = self._tasks.spawn(self._drain_watch())

    def resume(self) -> None:
        """Cancel an operator's drain that has not finished."""
        if self._drain_task is None or self.drained.is_set() or self.sessions is None:
            return
        logger.info("transceiver %s resumes taking sessions", self.config.transceiver_id)
        self._drain_task.cancel()
        self._drain_task, self.drain_reason = None, None
        self.sessions.draining = False

    async def _drain_watch(self) -> None:
        assert self.sessions is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_grace
        while len(self.sessions) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        if len(self.sessions):
            await self.sessions.close_all(reason="drain grace period over")
        logger.info("transceiver %s drained", self.config.transceiver_id)
        self.drained.set()

    async def _follow_drain_key(self) -> None:
        """Drain when the operator's key appears; resume when it goes before the drain ends."""
        assert self._redis is not None
        requested = bool(await self._redis.exists(drain_key("transceiver",
                                                            self.config.transceiver_id)))
        if requested and self._drain_task is None:
            self._drain_requested = True
            self.drain("requested by operator")
        elif not requested and self._drain_requested and self.drain_reason is not None:
            self._drain_requested = False
            self.resume()

    # heartbeat

    async def _heartbeat_loop(self) -> None:
        """Beat each interval; after a failed beat, retry sooner so that what this transceiver
        owns is back in Redis right after it reconnects (an emptied Redis heals)."""
        loop = asyncio.get_running_loop()
        delay = self.config.heartbeat_interval
        while not self._stopping:  # redis-py may turn our cancel into a RedisError: stop anyway
            started = loop.time()
            await asyncio.sleep(delay)
            self.loop_lag_ms = max(0.0, (loop.time() - started - delay) * 1000)
            try:
                await self._follow_drain_key()
                await self._write_heartbeat()
            except (OSError, aioredis.RedisError) as exc:
                failing = delay != self.config.heartbeat_interval  # not the first failure
                logger.log(logging.DEBUG if failing else logging.WARNING, "heartbeat: %s", exc)
                delay = min(REASSERT_RETRY, self.config.heartbeat_interval)
            else:
                delay = self.config.heartbeat_interval

    async def _write_heartbeat(self) -> None:
        """Re-assert what this transceiver owns in Redis, together (one MULTI): its registry
        entry, its heartbeat and the ids of the sessions it holds."""
        assert self._redis is not None and self.sessions is not None
        beat = TransceiverHeartbeat(
            transceiver_id=self.config.transceiver_id, bind=format_addr(self.advertised),
            pid=os.getpid(), sessions=len(self.sessions), connected=self.sessions.connected,
            capacity=self.sessions.capacity, loop_lag_ms=round(self.loop_lag_ms, 3),
            draining=self.sessions.draining, sent_at=time.time(), incarnation=self.incarnation,
            admin=self.admin_address,
        )
        ttl_ms = int(self.config.heartbeat_ttl * 1000)
        held_key = transceiver_sessions_key(self.config.transceiver_id)
        held = self.sessions.session_ids()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(TRANSCEIVERS_KEY, str(self.config.transceiver_id), beat.bind)
            pipe.set(transceiver_heartbeat_key(self.config.transceiver_id), beat.to_json(),
                     px=ttl_ms)
            pipe.delete(held_key)
            if held:
                pipe.sadd(held_key, *held)
                pipe.pexpire(held_key, ttl_ms)
            await pipe.execute()
        self._redis_ok_at = asyncio.get_running_loop().time()


async def serve(
    config: TransceiverConfig, *, reporter: SessionReporter, ready: asyncio.Event | None = None,
    agent_factory: AgentFactory = EchoAgent,
) -> None:
    """Run a transceiver. SIGTERM drains (no new sessions; live ones run up to the grace period)
    and then exits; SIGINT closes every session now."""
    running = Transceiver(config, reporter=reporter, agent_factory=agent_factory)
    async with running as transceiver:
        logger.info("READY transceiver %s %s", config.transceiver_id,
                    format_addr(transceiver.address))
        if ready is not None:
            ready.set()
        await wait_until_stopped(transceiver.drained,
                                 on_sigterm=lambda: transceiver.drain("SIGTERM"))
