"""The WebSocket answer for a path no route matches: the handshake is refused (HTTP 403,
RFC 6455 §4.2.2) instead of the router raising."""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer


class UnknownPathConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()
