"""Pages and actions: the demo is public, the dashboard and its POST actions are staff only."""

from __future__ import annotations

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from fleet.nodes import NodeState
from geo.models import Region
from relays.models import RelayShard
from tests.dashboard.fleet import make_nodes, make_region
from transceivers.models import Transceiver

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff(client: Client) -> Client:
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(user)
    return client


def test_demo_page_is_public_and_self_contained(client: Client) -> None:
    make_region("eu-west", default=True)
    page = client.get("/").content.decode()
    assert 'id="start"' in page and "Start talking" in page
    assert '<option value="eu-west">' in page
    assert 'href="https://db-ip.com"' in page and "IP Geolocation by DB-IP" in page
    assert "/static/demo.js" in page
    assert "//cdn" not in page and "googleapis" not in page


def test_dashboard_needs_staff(client: Client) -> None:
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    User.objects.create_user("joe", password="pw")
    client.login(username="joe", password="pw")
    assert client.get("/dashboard/").status_code == 302
    assert client.post("/dashboard/regions/x/enabled", {"enabled": "0"}).status_code == 302


def test_dashboard_renders_the_snapshot(staff: Client, redis_client: redis.Redis) -> None:
    make_nodes(make_region("eu-west", default=True), 1)
    make_region("us-east")
    page = staff.get("/dashboard/").content.decode()
    assert 'id="initial-snapshot"' in page and '"eu-west"' in page and '"us-east"' in page
    assert "/static/dashboard.js" in page


def test_disable_and_enable_a_region(staff: Client) -> None:
    make_region("eu-west", default=True)
    response = staff.post("/dashboard/regions/eu-west/enabled", {"enabled": "0"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert not Region.objects.get(code="eu-west").enabled
    staff.post("/dashboard/regions/eu-west/enabled", {"enabled": "1"})
    assert Region.objects.get(code="eu-west").enabled
    assert staff.post("/dashboard/regions/nope/enabled", {"enabled": "1"}).status_code == 404


def test_drain_and_resume_nodes(staff: Client) -> None:
    make_nodes(make_region("eu-west", default=True), 1)
    staff.post("/dashboard/nodes/transceiver/1/drain", {"drain": "1"})
    row = Transceiver.objects.get(transceiver_id=1)
    assert row.state == NodeState.DRAINING and "ops" in row.state_reason and row.state_changed_at
    staff.post("/dashboard/nodes/relay/1/drain", {"drain": "1"})
    assert RelayShard.objects.get(shard_id=1).state == NodeState.DRAINING
    staff.post("/dashboard/nodes/transceiver/1/drain", {"drain": "0"})
    assert Transceiver.objects.get(transceiver_id=1).state == NodeState.UNKNOWN
    assert staff.post("/dashboard/nodes/relay/9/drain", {"drain": "1"}).status_code == 404
    assert staff.post("/dashboard/nodes/region/1/drain", {"drain": "1"}).status_code == 404
    assert staff.get("/dashboard/nodes/relay/1/drain").status_code == 405


def test_admin_lists_nodes_and_sessions(admin_client: Client) -> None:
    make_nodes(make_region("eu-west", default=True), 1)
    for url in ("/admin/relays/relayshard/", "/admin/transceivers/transceiver/",
                "/admin/calls/session/", "/admin/geo/region/"):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    page = admin_client.get("/admin/transceivers/transceiver/").content.decode()
    assert "Live sessions" in page and "0 %" in page


def _staff_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
    return client


@pytest.mark.django_db(transaction=True)
async def test_dashboard_drain_then_resume_clears_the_drain_key_and_the_probe_sees_healthy(
    redis_url: str, redis_client: redis.Redis,
) -> None:
    """One drain path: the dashboard's resume must undo what its drain did, in Redis too, so
    the daemon takes sessions again and the next probe does not put the node back to draining."""
    import asyncio
    import uuid

    from asgiref.sync import sync_to_async
    from channels import layers as channel_layers

    from fleet.keys import drain_key
    from health.services import transceiver_check
    from tests.transceivers.conftest import Client as RtcClient
    from tests.transceivers.conftest import credentials, make_config, make_transceiver
    from transceivers import control

    channel_layers.channel_layers.backends = {}  # loop-bound: one per test loop
    config = make_config(redis_url)
    xcvr_id = config.transceiver_id
    await sync_to_async(lambda: Transceiver.objects.create(
        transceiver_id=xcvr_id, region=make_region("eu-west", default=True),
        bind_host="127.0.0.1", bind_port=1, capacity=10))()
    staff = await sync_to_async(_staff_client)()
    url = f"/dashboard/nodes/transceiver/{xcvr_id}/drain"
    offerer = RtcClient()
    async with make_transceiver(config) as daemon:
        ufrag, pwd = credentials()  # a session that never connects keeps the drain open
        await control.request_answer(
            transceiver_id=xcvr_id, session_id=str(uuid.uuid4()), offer_sdp=await offerer.offer(),
            ufrag=ufrag, pwd=pwd, relay_public=("127.0.0.1", 9), timeout=5,
        )
        await sync_to_async(staff.post)(url, {"drain": "1"})
        await sync_to_async(transceiver_check)(transceiver_id=xcvr_id, tick=1)
        async with asyncio.timeout(5):
            while daemon.ready():  # the daemon heard of the drain
                await asyncio.sleep(0.05)
        await sync_to_async(staff.post)(url, {"drain": "0"})
        await asyncio.sleep(4 * config.heartbeat_interval)  # the daemon reads the key each beat
        assert not redis_client.exists(drain_key("transceiver", xcvr_id))
        assert daemon.ready(), "the daemon still drains after a resume from the dashboard"
        await sync_to_async(transceiver_check)(transceiver_id=xcvr_id, tick=2)
        row = await Transceiver.objects.aget(transceiver_id=xcvr_id)
        assert row.state == NodeState.HEALTHY, (row.state, row.state_reason)
    await offerer.pc.close()
