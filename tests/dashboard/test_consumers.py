"""``/ws/dashboard``: staff only, a snapshot every push interval with packet rates."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from dashboard.consumers import CLOSE_FORBIDDEN, DashboardConsumer
from tests.dashboard.fleet import beat_relay, beat_transceiver, make_nodes, make_region

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_push() -> Iterator[None]:
    DashboardConsumer.push_interval = 0.2
    yield
    DashboardConsumer.push_interval = 1.0


def _communicator(user: object) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    ws.scope["user"] = user
    return ws


async def test_anonymous_and_non_staff_are_refused() -> None:
    for user in (AnonymousUser(), await database_sync_to_async(User.objects.create_user)("joe")):
        ws = _communicator(user)
        await ws.connect()
        assert await ws.receive_output(timeout=5) == {
            "type": "websocket.close", "code": CLOSE_FORBIDDEN
        }


async def test_staff_gets_snapshots_with_packet_rates(redis_client: redis.Redis) -> None:
    @database_sync_to_async
    def fleet() -> User:
        make_nodes(make_region("eu-west", default=True), 1)
        return User.objects.create_user("ops", is_staff=True)

    staff = await fleet()
    beat_relay(redis_client, 1, packets=0, sent_at=1000.0)  # stale: shows as down
    beat_transceiver(redis_client, 1)
    ws = _communicator(staff)
    assert (await ws.connect())[0]
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "fleet.snapshot"
    (region,) = first["regions"]
    assert region["code"] == "eu-west" and region["health"] == "down"

    now = time.time()
    beat_relay(redis_client, 1, packets=100, sent_at=now - 1)
    await ws.receive_json_from(timeout=5)
    beat_relay(redis_client, 1, packets=600, sent_at=now)
    latest = await ws.receive_json_from(timeout=5)
    relay = latest["regions"][0]["relays"][0]
    assert latest["regions"][0]["health"] == "up"
    assert relay["pps"] == pytest.approx(500.0, rel=0.01)
    await ws.disconnect()


async def test_keeps_pushing_past_the_redis_read_timeout(redis_client: redis.Redis) -> None:
    """No channel layer, so no blocking Redis read that could time out under an idle socket."""
    staff = await database_sync_to_async(User.objects.create_user)("ops", is_staff=True)
    ws = _communicator(staff)
    assert (await ws.connect())[0]
    deadline = time.monotonic() + 6.5  # redis-py 8 async clients time out reads after 5 s
    while time.monotonic() < deadline:
        assert (await ws.receive_json_from(timeout=5))["type"] == "fleet.snapshot"
    await ws.disconnect()
