"""``/ws/sessions/<id>`` over the real Redis channel layer: current state first, then events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from calls.consumers import CLOSE_NOT_FOUND
from calls.models import Session, SessionState
from fleet.keys import session_group
from signaling_site.routing import websocket_urlpatterns
from tests.dashboard.fleet import make_nodes, make_region, make_session

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def layer(redis_url: str) -> AsyncIterator[object]:
    """The configured channels_redis layer, rebuilt so it uses the test Redis."""
    channel_layers.backends.clear()
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"
    yield layer
    await layer.flush()
    channel_layers.backends.clear()


@database_sync_to_async
def _session() -> Session:
    relay, xcvr = make_nodes(make_region("eu-west", default=True), 1)
    return make_session(relay, xcvr, state=SessionState.ANSWERED)


def _communicator(session_id: object) -> WebsocketCommunicator:
    return WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/sessions/{session_id}")


async def test_sends_current_state_then_forwards_events(layer: object) -> None:
    session = await _session()
    ws = _communicator(session.id)
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "session.state" and first["state"] == "answered"
    assert first["session_id"] == str(session.id)
    assert (first["region"], first["relay_shard"], first["transceiver"]) == ("eu-west", 1, 1)
    assert first["region_reason"] == "nearest"

    event = {"type": "session.event", "session_id": str(session.id), "state": "connected",
             "detail": "dtls up", "at": 1.5}
    await layer.group_send(session_group(str(session.id)), event)  # type: ignore[attr-defined]
    assert await ws.receive_json_from(timeout=5) == event
    await ws.disconnect()


async def test_other_sessions_events_are_not_forwarded(layer: object) -> None:
    session = await _session()
    ws = _communicator(session.id)
    await ws.connect()
    await ws.receive_json_from(timeout=5)
    other = str(uuid.uuid4())
    await layer.group_send(  # type: ignore[attr-defined]
        session_group(other),
        {"type": "session.event", "session_id": other, "state": "closed", "detail": "", "at": 0},
    )
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()


async def test_unknown_session_is_closed_with_4404(layer: object) -> None:
    ws = _communicator(uuid.uuid4())
    connected, _ = await ws.connect()
    assert connected
    closed = await ws.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}


async def test_survives_idling_past_the_redis_read_timeout(layer: object) -> None:
    session = await _session()
    ws = _communicator(session.id)
    await ws.connect()
    await ws.receive_json_from(timeout=5)
    await asyncio.sleep(7)  # longer than the client's read timeout and the layer's BZPOPMIN
    event = {"type": "session.event", "session_id": str(session.id), "state": "closed",
             "detail": "bye", "at": 2.0}
    await layer.group_send(session_group(str(session.id)), event)  # type: ignore[attr-defined]
    assert await ws.receive_json_from(timeout=5) == event
    await ws.disconnect()
