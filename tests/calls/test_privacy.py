"""What a session reveals and to whom: the caller's address only to staff; the events socket
only to same-site pages (or clients that send no Origin, which are not browsers)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from calls.models import Session, SessionState
from signaling_site.routing import websocket_urlpatterns
from tests.dashboard.fleet import make_nodes, make_region, make_session


def _session() -> Session:
    relay, xcvr = make_nodes(make_region("eu-west", default=True), 1)
    session = make_session(relay, xcvr, state=SessionState.ANSWERED)
    Session.objects.filter(id=session.id).update(client_ip="203.0.113.77")
    return session


@pytest.mark.django_db
def test_client_ip_is_shown_to_staff_only(client: Client) -> None:
    session = _session()
    anonymous = json.loads(client.get(f"/v1/sessions/{session.id}").content)
    assert "client_ip" not in anonymous and anonymous["state"] == "answered"
    staff = User.objects.create_user("ops", password="x" * 12, is_staff=True)
    client.force_login(staff)
    assert json.loads(client.get(f"/v1/sessions/{session.id}").content)["client_ip"] == \
        "203.0.113.77"


async def _connect(session_id: object, origin: bytes | None) -> bool:
    headers = [(b"host", b"127.0.0.1:8000")] + ([(b"origin", origin)] if origin else [])
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/sessions/{session_id}",
                               headers=headers)
    connected, _ = await ws.connect(timeout=5)
    await ws.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
async def test_session_socket_refuses_cross_site_origins(redis_url: str) -> None:
    channel_layers.backends.clear()
    session = await database_sync_to_async(_session)()
    assert not await _connect(session.id, b"https://evil.example")
    assert await _connect(session.id, b"http://127.0.0.1:8000")  # the demo page itself
    assert await _connect(session.id, None)  # SDKs and servers send no Origin
    channel_layers.backends.clear()
