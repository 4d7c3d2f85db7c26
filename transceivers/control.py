"""Signaling <-> transceiver control over the Channels layer: message schema and client calls.

Requests go to ``registry.transceiver_channel(id)``; a request that wants a reply names a
``reply_channel`` from ``layer.new_channel()`` and an ``expires_at`` (epoch seconds) after which
the transceiver ignores it (the caller has given up). Replies: ``session.answer``, ``pong`` or
``error`` with a code from ``ERROR_CODES``.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import asdict, dataclass
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer

from relays.framing import Addr
from relays.registry import transceiver_channel

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
    """A session lifecycle event, as sent to ``registry.session_group(session_id)``."""

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
    reply_channel: str
    expires_at: float

    def to_message(self) -> dict[str, Any]:
        return {"type": OFFER, **asdict(self), "relay_public": list(self.relay_public)}

    @classmethod
    def parse(cls, message: dict[str, Any]) -> OfferRequest:
        """``ValueError`` on a malformed message (a bug or version skew on the caller side)."""
        try:
            host, port = message["relay_public"]
            return cls(
                str(message["session_id"]), str(message["offer_sdp"]), str(message["ufrag"]),
                str(message["pwd"]), (str(host), int(port)), str(message["reply_channel"]),
                float(message["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError("bad offer request") from None


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    if layer is None:
        raise ControlError("internal", "no channel layer configured")
    return layer


async def _request(transceiver_id: int, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``message`` with a fresh reply channel and wait for the reply."""
    layer = _layer()
    reply_channel = await layer.new_channel()
    message = {**message, "reply_channel": reply_channel, "expires_at": time.time() + timeout}
    try:
        await layer.send(transceiver_channel(transceiver_id), message)
        reply: dict[str, Any] = await asyncio.wait_for(layer.receive(reply_channel), timeout)
    except ChannelFull:
        raise ControlError("full", "control channel full") from None
    except TimeoutError:
        raise ControlTimeout(f"transceiver {transceiver_id} did not reply in {timeout}s") from None
    if reply.get("type") == ERROR:
        raise ControlError(str(reply.get("code")), str(reply.get("detail", "")))
    return reply


async def request_answer(
    *, transceiver_id: int, session_id: str, offer_sdp: str, ufrag: str, pwd: str,
    relay_public: tuple[str, int], timeout: float,
) -> str:
    """Ask a transceiver to open ``session_id`` and return its SDP answer."""
    request = OfferRequest(session_id, offer_sdp, ufrag, pwd, relay_public, "", 0.0)
    message = request.to_message()
    reply = await _request(transceiver_id, message, timeout)
    if reply.get("type") != ANSWER or not isinstance(reply.get("sdp"), str):
        raise ControlError("internal", "unexpected reply")
    return str(reply["sdp"])


async def request_close(*, transceiver_id: int, session_id: str) -> None:
    """Ask a transceiver to close ``session_id`` (fire-and-forget; unknown ids are ignored)."""
    try:
        await _layer().send(
            transceiver_channel(transceiver_id), {"type": CLOSE, "session_id": session_id}
        )
    except ChannelFull:
        raise ControlError("full", "control channel full") from None


async def request_ping(*, transceiver_id: int, timeout: float) -> dict[str, Any]:
    """Return the transceiver's status (sessions, connected, capacity, loop_lag_ms, draining)."""
    reply = await _request(transceiver_id, {"type": PING}, timeout)
    if reply.get("type") != PONG:
        raise ControlError("internal", "unexpected reply")
    return {k: v for k, v in reply.items() if k != "type"}
