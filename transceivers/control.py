"""Signaling <-> transceiver control over plain Redis lists: message schema and client calls.

A request is one JSON object pushed onto ``fleet.keys.control_queue_key(id)``, which the
transceiver pops oldest first. A request that wants a reply names a ``reply_key``
(``fleet.keys.control_reply_key(token)``) and an ``expires_at`` (epoch seconds) after which the
transceiver ignores it (the caller has given up); the caller blocks on that list for the one
reply: ``session.answer``, ``pong`` or ``error`` with a code from ``ERROR_CODES``.

Why not the Channels layer (which still carries session events to WebSockets): one
request/reply over channels_redis cost 1.6 ms here against 0.47 ms for a raw list push and
blocking pop, and the control leg is on every offer's critical path.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from django.conf import settings

from fleet.addresses import Addr
from fleet.keys import control_queue_key, control_reply_key

T = TypeVar("T")

OFFER = "session.offer"
CLOSE = "session.close"
PING = "ping"
ANSWER = "session.answer"
PONG = "pong"
ERROR = "error"
EVENT = "session.event"

ERROR_CODES = frozenset({"bad_sdp", "no_audio", "full", "draining", "internal"})


class ControlError(Exception):
    """The transceiver refused a request; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code if code in ERROR_CODES else "internal"
        self.detail = detail


class ControlTimeout(Exception):
    """No reply from the transceiver in time (it may be down or overloaded)."""


class EventState(enum.StrEnum):
    ANSWERED = "answered"
    CHECKING = "checking"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True)
class SessionEvent:
    """A session lifecycle event, as sent to ``fleet.keys.session_group(session_id)``."""

    session_id: str
    state: EventState
    detail: str
    at: float  # epoch seconds

    def to_message(self) -> dict[str, Any]:
        return {"type": EVENT, **asdict(self), "state": str(self.state)}

    @classmethod
    def parse(cls, message: dict[str, Any]) -> SessionEvent:
        return cls(
            str(message["session_id"]), EventState(message["state"]),
            str(message.get("detail", "")), float(message["at"]),
        )


@dataclass(frozen=True)
class OfferRequest:
    session_id: str
    offer_sdp: str
    ufrag: str
    pwd: str
    relay_public: Addr
    reply_key: str
    expires_at: float
    relay_tcp_port: int = 0  # the relay's ICE-TCP port on the same host; 0: none

    def to_message(self) -> dict[str, Any]:
        return {"type": OFFER, **asdict(self), "relay_public": list(self.relay_public)}

    @classmethod
    def parse(cls, message: dict[str, Any]) -> OfferRequest:
        """``ValueError`` on a malformed message (a bug or version skew on the caller side)."""
        try:
            host, port = message["relay_public"]
            return cls(
                str(message["session_id"]), str(message["offer_sdp"]), str(message["ufrag"]),
                str(message["pwd"]), (str(host), int(port)), str(message["reply_key"]),
                float(message["expires_at"]), int(message.get("relay_tcp_port") or 0),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError("bad offer request") from None


QUEUE_CAPACITY = 1000  # requests waiting for one transceiver before offers are refused "full"
QUEUE_TTL = 60  # s: the queue of a transceiver that stopped popping goes away by itself
REPLY_TTL = 30  # s: a reply nobody waited for goes away by itself

# A pooled connection to a Redis that restarted fails once; the next one reconnects.
_DROPPED = (OSError, redis.ConnectionError)

# One client per event loop: signaling's daphne loop keeps its own for good; a synchronous
# caller (Celery, through ``call_sync``) gets one for its short-lived loop and closes it.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def _client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # no socket timeout: a blocking pop waits as long as its own timeout says
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1.0)
        _clients[loop] = client
    return client


async def _close_client() -> None:
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def call_sync(request: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
    """Run one control call from synchronous code (its own event loop and Redis client)."""
    async def once() -> T:
        try:
            return await request(**kwargs)
        finally:
            await _close_client()
    return async_to_sync(once)()


async def _pipelined(fill: Callable[[Any], object]) -> list[Any]:
    """The replies to the commands ``fill`` queues on a pipeline, sent in one round trip and
    tried once more after a dropped connection; ``ControlError`` when Redis stays away."""
    for attempt in (1, 2):
        try:
            async with _client().pipeline(transaction=False) as pipe:
                fill(pipe)
                replies: list[Any] = await pipe.execute()
                return replies
        except _DROPPED as exc:
            if attempt == 2:
                raise ControlError("internal", f"control queue: {exc}") from None
    raise AssertionError("unreachable: the second attempt returns or raises")


async def send(transceiver_id: int, message: dict[str, Any]) -> None:
    """Queue ``message`` for the transceiver, tried once more after a dropped connection;
    ``ControlError`` (and nothing queued) when its queue is full or Redis stays away."""
    def push(pipe: Any) -> None:
        pipe.eval(_PUSH, 1, control_queue_key(transceiver_id), json.dumps(message), QUEUE_TTL,
                  QUEUE_CAPACITY)

    (queued,) = await _pipelined(push)
    if int(queued) < 0:
        raise ControlError("full", "control queue full")


async def reply(client: aioredis.Redis, reply_key: str, message: dict[str, Any]) -> None:
    """The transceiver's side: push the one reply to a request."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.lpush(reply_key, json.dumps(message))
        pipe.expire(reply_key, REPLY_TTL)
        await pipe.execute()


# The one rule for a full queue: a message is queued unless ``QUEUE_CAPACITY`` wait already, in
# which case nothing is queued and -1 comes back; a request's refusal also goes to its own reply
# list (a second key), so the caller's blocking pop, pipelined behind this in the same round
# trip, gets either the transceiver's reply or that refusal. KEYS: queue[, reply list]; ARGV:
# message, queue TTL, capacity[, refusal, reply TTL].
_PUSH = """
local queued = redis.call('LLEN', KEYS[1])
if queued >= tonumber(ARGV[3]) then
  if KEYS[2] then
    redis.call('LPUSH', KEYS[2], ARGV[4])
    redis.call('EXPIRE', KEYS[2], ARGV[5])
  end
  return -1
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return queued + 1
"""
_FULL = json.dumps({"type": ERROR, "code": "full", "detail": "control queue full"})


async def _request(transceiver_id: int, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``message`` naming a fresh reply list and wait for the reply: the push and the
    blocking pop in one pipeline, one round trip to Redis besides the wait itself (the push
    was a round trip of its own: ~0.3 ms of the offer's control leg)."""
    reply_key = control_reply_key(uuid.uuid4().hex)
    message = {**message, "reply_key": reply_key, "expires_at": time.time() + timeout}
    queue_key = control_queue_key(transceiver_id)

    def push_and_wait(pipe: Any) -> None:
        pipe.eval(_PUSH, 2, queue_key, reply_key, json.dumps(message),
                  QUEUE_TTL, QUEUE_CAPACITY, _FULL, REPLY_TTL)
        pipe.brpop([reply_key], timeout=timeout)

    _, popped = await _pipelined(push_and_wait)
    if popped is None:
        raise ControlTimeout(f"transceiver {transceiver_id} did not reply in {timeout}s")
    answer: dict[str, Any] = json.loads(popped[1])
    if answer.get("type") == ERROR:
        raise ControlError(str(answer.get("code")), str(answer.get("detail", "")))
    return answer


async def request_answer(
    *, transceiver_id: int, session_id: str, offer_sdp: str, ufrag: str, pwd: str,
    relay_public: tuple[str, int], timeout: float, relay_tcp_port: int = 0,
) -> str:
    """Ask a transceiver to open ``session_id`` and return its SDP answer."""
    request = OfferRequest(session_id, offer_sdp, ufrag, pwd, relay_public, "", 0.0,
                           relay_tcp_port)
    message = request.to_message()
    reply = await _request(transceiver_id, message, timeout)
    if reply.get("type") != ANSWER or not isinstance(reply.get("sdp"), str):
        raise ControlError("internal", "unexpected reply")
    return str(reply["sdp"])


async def request_close(*, transceiver_id: int, session_id: str) -> None:
    """Ask a transceiver to close ``session_id`` (fire-and-forget; unknown ids are ignored)."""
    await send(transceiver_id, {"type": CLOSE, "session_id": session_id})


async def request_ping(*, transceiver_id: int, timeout: float) -> dict[str, Any]:
    """Return the transceiver's status (sessions, connected, capacity, loop_lag_ms, draining)."""
    reply = await _request(transceiver_id, {"type": PING}, timeout)
    if reply.get("type") != PONG:
        raise ControlError("internal", "unexpected reply")
    return {k: v for k, v in reply.items() if k != "type"}
