"""WebSocket ``/ws/dashboard`` (staff only): a fleet snapshot pushed every second."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboard.selectors import RateState, fleet_snapshot, snapshot_with_rates

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403  # application close code (RFC 6455 §7.4.2): not a staff user


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    push_interval = 1.0  # seconds; heartbeats arrive about this often
    # It only pushes on a timer: no channel layer, so no blocking Redis read per open dashboard.
    channel_layer_alias = "dashboard-needs-no-channel-layer"  # unknown alias: layer is None

    task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not (user.is_active and user.is_staff):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.task = asyncio.create_task(self._push_loop())

    async def disconnect(self, code: int) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _push_loop(self) -> None:
        previous: dict[str, RateState] = {}
        while True:
            try:
                snapshot = await database_sync_to_async(fleet_snapshot)()
            except redis.RedisError as exc:
                logger.warning("dashboard snapshot: %s", exc)
                await self.send_json({"type": "fleet.error", "detail": "Redis is unreachable"})
            else:
                message, previous = snapshot_with_rates(snapshot, previous)
                await self.send_json({"type": "fleet.snapshot", **message})
            await asyncio.sleep(self.push_interval)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The dashboard only listens; actions go through the POST forms."""
