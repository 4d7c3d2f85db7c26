"""Where a session's lifecycle goes: the DB (through ``calls.services``) and its Channels group."""

from __future__ import annotations

import importlib
import logging
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from relays.registry import session_group
from transceivers.control import SessionEvent

logger = logging.getLogger(__name__)


class SessionReporter(Protocol):
    async def connected(self, *, session_id: str) -> None: ...

    async def ended(self, *, session_id: str, state: str, reason: str) -> None: ...


class EventSink(Protocol):
    async def publish(self, event: SessionEvent) -> None: ...


def _calls_service(name: str) -> object | None:
    """``calls.services.<name>`` when signaling provides it (it is written in parallel)."""
    try:
        module = importlib.import_module("calls.services")
    except ImportError:
        return None
    return getattr(module, name, None)


@database_sync_to_async
def _mark_connected(session_id: str) -> None:
    service = _calls_service("session_mark_connected")
    if callable(service):
        service(session_id=session_id)
    else:
        logger.warning("calls.services.session_mark_connected missing; %s not recorded", session_id)


@database_sync_to_async
def _end(session_id: str, state: str, reason: str) -> None:
    service = _calls_service("session_end")
    if callable(service):
        service(session_id=session_id, state=state, reason=reason)
    else:
        logger.warning("calls.services.session_end missing; %s not recorded", session_id)


class ServicesReporter:
    """Default reporter: ``calls.services`` in a worker thread, never blocking the loop."""

    async def connected(self, *, session_id: str) -> None:
        await _mark_connected(session_id)

    async def ended(self, *, session_id: str, state: str, reason: str) -> None:
        await _end(session_id, state, reason)


class ChannelEventSink:
    """Publishes events to ``registry.session_group(session_id)`` (the demo page's socket)."""

    async def publish(self, event: SessionEvent) -> None:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(session_group(event.session_id), event.to_message())
