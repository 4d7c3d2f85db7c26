"""The transceiver's control queue: signaling's requests in, replies out (Redis lists, see
``transceivers.control``). Handlers are named after the message type; one slow offer never
delays the others."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from fleet.keys import control_queue_key
from fleet.periodic import next_delay
from transceivers import control
from transceivers.background import BackgroundTasks
from transceivers.sessions import SessionManager

logger = logging.getLogger(__name__)

CONTROL_RETRY = 1.0  # longest wait between retries while Redis stays away (s)
POP_TIMEOUT = 1.0  # s a blocking pop waits before it is issued again


class ControlServer:
    """Serves ``transceiver.<id>``: offers, closes and pings from signaling and health."""

    def __init__(
        self, *, transceiver_id: int, redis_url: str, sessions: SessionManager,
        tasks: BackgroundTasks, status: Callable[[], dict[str, Any]],
        stopping: Callable[[], bool],
    ) -> None:
        self.transceiver_id = transceiver_id
        # its own client: a blocking pop holds a connection, and needs no socket timeout
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0)
        self.sessions = sessions
        self._tasks = tasks
        self._status = status
        self._stopping = stopping

    async def run(self) -> None:
        key = control_queue_key(self.transceiver_id)
        retry = 0.0
        try:
            while True:
                try:
                    popped = await self._redis.brpop([key], timeout=POP_TIMEOUT)
                except (OSError, aioredis.RedisError) as exc:
                    if self._stopping():
                        return
                    # the first retry at once (a restarted Redis is back within a blink and
                    # pings must be answered), then back off while it stays away
                    if retry == 0:
                        logger.warning("control queue: %s; retrying", exc)
                    await asyncio.sleep(retry)
                    retry = next_delay(retry, interval=0.0, failed=True,
                                       max_backoff=CONTROL_RETRY)
                    continue
                retry = 0.0
                if popped is not None:
                    self._dispatch(popped[1])
        finally:
            await self._redis.aclose()

    def _dispatch(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            logger.warning("control: dropped a request that is not a JSON object")
            return
        handler = {
            control.OFFER: self.session_offer, control.CLOSE: self.session_close,
            control.PING: self.ping,
        }.get(str(message.get("type")))
        if handler is None:
            logger.warning("control: unknown message type %r", message.get("type"))
            return
        self._tasks.spawn(handler(message))

    async def session_offer(self, message: dict[str, Any]) -> None:
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
                relay_tcp_port=request.relay_tcp_port,
            )
            reply: dict[str, Any] = {
                "type": control.ANSWER, "session_id": request.session_id, "sdp": sdp,
            }
        except control.ControlError as exc:
            reply = {"type": control.ERROR, "code": exc.code, "detail": exc.detail}
        except Exception as exc:  # the caller must hear back; aiortc raises many kinds
            logger.exception("session %s: offer failed", request.session_id)
            reply = {"type": control.ERROR, "code": "internal", "detail": type(exc).__name__}
        await self._reply(request.reply_key, reply)
        if reply["type"] == control.ANSWER:  # only now: they would compete with the reply
            self.sessions.announce_answered(request.session_id)

    async def session_close(self, message: dict[str, Any]) -> None:
        session_id = str(message.get("session_id"))
        await self.sessions.close(session_id, state="ended", reason="closed by signaling")

    async def ping(self, message: dict[str, Any]) -> None:
        if float(message.get("expires_at", 0)) >= time.time():
            reply = {"type": control.PONG, **self._status()}
            await self._reply(str(message.get("reply_key")), reply)

    async def _reply(self, reply_key: str, message: dict[str, Any]) -> None:
        try:
            await control.reply(self._redis, reply_key, message)
        except (OSError, aioredis.RedisError) as exc:  # the caller times out
            logger.warning("control: reply to %s failed: %s", reply_key, exc)
