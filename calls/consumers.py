"""WebSocket ``/ws/sessions/<id>``: a session's current state, then its live events."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls.selectors import session_get
from calls.serializers import session_snapshot
from fleet.keys import session_group

CLOSE_NOT_FOUND = 4404  # application close code (RFC 6455 §7.4.2): no such session


class SessionEventsConsumer(AsyncJsonWebsocketConsumer):
    """Joins ``session_group(id)``; forwards each ``session.event`` the transceiver publishes."""

    group: str | None = None

    async def connect(self) -> None:
        session_id = str(self.scope["url_route"]["kwargs"]["session_id"])
        await self.accept()
        # Join before reading: an event published in between is then forwarded, not lost.
        self.group = session_group(session_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        session = await database_sync_to_async(session_get)(session_id=session_id)
        if session is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.send_json(session_snapshot(session))

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def session_event(self, event: dict[str, Any]) -> None:
        await self.send_json(event)
