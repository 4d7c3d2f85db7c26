"""Where a session's lifecycle goes: seams the daemon's composer fills in.

``SessionReporter`` records it (the DB writer lives in ``calls.reporting``, a layer above, and
``run_transceiver`` injects it); ``ChannelEventSink`` publishes it to the session's Channels group.
"""

from __future__ import annotations

from typing import Protocol

from channels.layers import get_channel_layer

from fleet.keys import session_group
from transceivers.control import SessionEvent


class SessionReporter(Protocol):
    async def answered(self, *, session_id: str, incarnation: str) -> None:
        """The transceiver process ``incarnation`` answered the session (it holds it)."""

    async def connected(self, *, session_id: str) -> None: ...

    async def ended(self, *, session_id: str, state: str, reason: str) -> None: ...


class EventSink(Protocol):
    async def publish(self, event: SessionEvent) -> None: ...


class ChannelEventSink:
    """Publishes events to ``fleet.keys.session_group(session_id)`` (the page's WebSocket)."""

    async def publish(self, event: SessionEvent) -> None:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(session_group(event.session_id), event.to_message())
