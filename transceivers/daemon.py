"""The transceiver daemon: one UDP socket, the sessions on it, control, heartbeat, registry."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from health.http import serve_admin
from relays.framing import Addr
from relays.registry import (
    TRANSCEIVERS_KEY,
    TransceiverHeartbeat,
    drain_key,
    format_addr,
    transceiver_channel,
    transceiver_heartbeat_key,
)
from transceivers import control, ice, speedups
from transceivers.agents import AgentFactory, EchoAgent
from transceivers.reporting import ChannelEventSink, EventSink, ServicesReporter, SessionReporter
from transceivers.services import transceiver_register
from transceivers.sessions import SessionManager

logger = logging.getLogger(__name__)

CONTROL_RETRY = 1.0  # seconds to wait after the channel layer failed (Redis away)
TASK_STOP_TIMEOUT = 2.0  # seconds close() waits for cancelled tasks before moving on
DRAIN_POLL = 0.1  # seconds between checks of a draining transceiver's live sessions


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
    admin: Addr | None = None  # HOST:PORT of the /livez + /readyz endpoint


class Transceiver:
    """A running transceiver; ``async with Transceiver(config) as t:`` in tests."""

    def __init__(
        self, config: TransceiverConfig, *, agent_factory: AgentFactory = EchoAgent,
        reporter: SessionReporter | None = None, events: EventSink | None = None,
    ) -> None:
        self.config = config
        self._agent_factory = agent_factory
        self._reporter = reporter or ServicesReporter()
        self._events = events or ChannelEventSink()
        self._redis: aioredis.Redis | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.mux: ice.IceMux | None = None
        self.sessions: SessionManager | None = None
        self.loop_lag_ms = 0.0
        self._stopping = False
        self.drained = asyncio.Event()  # a drain is complete: serve() returns, the process exits
        self.drain_reason: str | None = None
        self._drain_requested = False  # by the operator's Redis key (SIGTERM cannot be undone)
        self._drain_task: asyncio.Task[None] | None = None
        self._admin: asyncio.Server | None = None

    @property
    def address(self) -> Addr:
        assert self.mux is not None, "not started"
        return self.mux.address

    async def start(self) -> None:
        ice.install()
        speedups.install()
        self.mux = ice.IceMux(ice.bind_udp(self.config.bind_host, self.config.bind_port))
        self.mux.start()
        self.sessions = SessionManager(
            mux=self.mux, agent_factory=self._agent_factory, reporter=self._reporter,
            events=self._events, connect_timeout=self.config.connect_timeout,
            capacity=self.config.capacity,
        )
        host, port = self.address
        if self.config.region_code is not None:
            await database_sync_to_async(transceiver_register)(
                transceiver_id=self.config.transceiver_id, region_code=self.config.region_code,
                bind_host=host, bind_port=port, capacity=self.config.capacity,
            )
        self._redis = aioredis.Redis.from_url(self.config.redis_url)
        await self._redis.hset(
            TRANSCEIVERS_KEY, str(self.config.transceiver_id), format_addr((host, port))
        )
        await self._write_heartbeat()
        self._spawn(self._control_loop())
        self._spawn(self._heartbeat_loop())
        if self.config.admin is not None:
            self._admin = await serve_admin(self.config.admin, ready=self.ready)
        logger.info("transceiver %s on %s:%s", self.config.transceiver_id, host, port)

    async def close(self) -> None:
        """Stop taking requests, close every session, leave the registry, close the socket."""
        self._stopping = True
        if self._admin is not None:
            self._admin.close()
        if self.sessions is not None:
            self.sessions.draining = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=TASK_STOP_TIMEOUT)
        if self.sessions is not None:
            await self.sessions.close_all(reason="transceiver shutting down")
        if self._redis is not None:
            await self._redis.hdel(TRANSCEIVERS_KEY, str(self.config.transceiver_id))
            await self._redis.delete(transceiver_heartbeat_key(self.config.transceiver_id))
            if self.drained.is_set() and self._drain_requested:  # done: a restart starts fresh
                await self._redis.delete(drain_key("transceiver", self.config.transceiver_id))
            await self._redis.aclose()
            self._redis = None
        if self.mux is not None:
            self.mux.close()
        logger.info("transceiver %s stopped", self.config.transceiver_id)

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
            "sessions": len(self.sessions),
            "connected": self.sessions.connected,
            "capacity": self.sessions.capacity,
            "loop_lag_ms": round(self.loop_lag_ms, 3),
            "draining": self.sessions.draining,
            "drops": {reason.value: n for reason, n in self.mux.table.drops.items()}
            if self.mux else {},
        }

    def ready(self) -> bool:
        """Readiness: started and taking new sessions (liveness is the loop answering at all)."""
        return self.sessions is not None and not self.sessions.draining and not self._stopping

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
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_watch())
        self._tasks.add(self._drain_task)
        self._drain_task.add_done_callback(self._tasks.discard)

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

    # control: handlers are named after the message type

    async def _control_loop(self) -> None:
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS is not configured"
        channel = transceiver_channel(self.config.transceiver_id)
        while True:
            try:
                message = await layer.receive(channel)
            except (OSError, aioredis.RedisError) as exc:
                if self._stopping:  # redis-py may turn our cancel into a read timeout
                    return
                logger.warning("control channel: %s; retrying", exc)
                await asyncio.sleep(CONTROL_RETRY)
                continue
            handler = {
                control.OFFER: self.session_offer, control.CLOSE: self.session_close,
                control.PING: self.ping,
            }.get(str(message.get("type")))
            if handler is None:
                logger.warning("control: unknown message type %r", message.get("type"))
                continue
            self._spawn(handler(message))  # one slow offer never delays the others

    async def session_offer(self, message: dict[str, Any]) -> None:
        assert self.sessions is not None
        try:
            request = control.OfferRequest.parse(message)
        except ValueError as exc:
            logger.warning("control: %s", exc)
            return
        if request.expires_at < time.time():
            logger.info("control: dropped expired offer for %s", request.session_id)
            return
        try:
            sdp = await self.sessions.open(
                session_id=request.session_id, offer_sdp=request.offer_sdp, ufrag=request.ufrag,
                pwd=request.pwd, relay_public=request.relay_public,
            )
            reply: dict[str, Any] = {
                "type": control.ANSWER, "session_id": request.session_id, "sdp": sdp,
            }
        except control.ControlError as exc:
            reply = {"type": control.ERROR, "code": exc.code, "detail": exc.detail}
        except Exception as exc:  # the caller must hear back; aiortc raises many kinds
            logger.exception("session %s: offer failed", request.session_id)
            reply = {"type": control.ERROR, "code": "internal", "detail": type(exc).__name__}
        await self._reply(request.reply_channel, reply)

    async def session_close(self, message: dict[str, Any]) -> None:
        assert self.sessions is not None
        session_id = str(message.get("session_id"))
        await self.sessions.close(session_id, state="ended", reason="closed by signaling")

    async def ping(self, message: dict[str, Any]) -> None:
        if float(message.get("expires_at", 0)) >= time.time():
            reply = {"type": control.PONG, **self.status()}
            await self._reply(str(message.get("reply_channel")), reply)

    async def _reply(self, channel: str, reply: dict[str, Any]) -> None:
        layer = get_channel_layer()
        assert layer is not None
        try:
            await layer.send(channel, reply)
        except Exception:
            logger.exception("control: reply to %s failed", channel)

    # heartbeat

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.heartbeat_interval
        while not self._stopping:  # redis-py may turn our cancel into a RedisError: stop anyway
            started = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag_ms = max(0.0, (loop.time() - started - interval) * 1000)
            try:
                await self._follow_drain_key()
                await self._write_heartbeat()
            except (OSError, aioredis.RedisError) as exc:
                logger.warning("heartbeat: %s", exc)

    async def _write_heartbeat(self) -> None:
        assert self._redis is not None and self.sessions is not None
        beat = TransceiverHeartbeat(
            transceiver_id=self.config.transceiver_id, bind=format_addr(self.address),
            pid=os.getpid(), sessions=len(self.sessions), connected=self.sessions.connected,
            capacity=self.sessions.capacity, loop_lag_ms=round(self.loop_lag_ms, 3),
            draining=self.sessions.draining, sent_at=time.time(),
        )
        key = transceiver_heartbeat_key(self.config.transceiver_id)
        await self._redis.set(key, beat.to_json(), px=int(self.config.heartbeat_ttl * 1000))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve(
    config: TransceiverConfig, *, ready: asyncio.Event | None = None,
    agent_factory: AgentFactory = EchoAgent,
) -> None:
    """Run a transceiver. SIGTERM drains (no new sessions; live ones run up to the grace period)
    and then exits; SIGINT closes every session now."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with Transceiver(config, agent_factory=agent_factory) as transceiver:
            loop.add_signal_handler(signal.SIGTERM, transceiver.drain, "SIGTERM")
            address = format_addr(transceiver.address)
            logger.info("READY transceiver %s %s", config.transceiver_id, address)
            if ready is not None:
                ready.set()
            stopped = asyncio.create_task(stop.wait())
            drained = asyncio.create_task(transceiver.drained.wait())
            await asyncio.wait((stopped, drained), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            drained.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
