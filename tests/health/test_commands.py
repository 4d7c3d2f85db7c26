"""``manage.py drain``: stored state, the daemon's key, resume, unknown nodes, --wait."""

from __future__ import annotations

from io import StringIO

import pytest
import redis
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings

from fleet.keys import drain_key
from fleet.nodes import NodeState
from relays.models import RelayShard
from tests.dashboard.fleet import make_nodes, make_region

pytestmark = pytest.mark.django_db


def drain(*args: str) -> str:
    out = StringIO()
    call_command("drain", *args, stdout=out)
    return out.getvalue().strip()


def test_drain_relay_then_resume(redis_client: redis.Redis) -> None:
    make_nodes(make_region("eu", default=True), 1)
    assert drain("relay", "1", "--reason", "kernel upgrade") == "relay 1: draining"
    assert RelayShard.objects.get(shard_id=1).state == NodeState.DRAINING
    assert redis_client.get(drain_key("relay", 1)) == b"kernel upgrade"
    assert drain("relay", "1") == "relay 1: already draining"
    assert drain("relay", "1", "--resume") == "relay 1: resumed"
    assert RelayShard.objects.get(shard_id=1).state == NodeState.UNKNOWN
    assert not redis_client.exists(drain_key("relay", 1))


def test_drain_wait_returns_when_no_heartbeat_is_left(redis_client: redis.Redis) -> None:
    make_nodes(make_region("eu", default=True), 1)
    assert drain("transceiver", "1", "--wait").endswith("transceiver 1: drained and exited")


def test_unknown_node_is_an_error(redis_client: redis.Redis) -> None:
    with pytest.raises(CommandError, match="no transceiver 9"):
        drain("transceiver", "9")


def test_drain_without_an_id_in_a_transceiver_pod_drains_its_own(
    redis_client: redis.Redis, settings: Settings
) -> None:
    make_nodes(make_region("eu", default=True), 101)
    settings.TRANSCEIVER_ID_BASE, settings.POD_INDEX = 100, "1"
    assert drain("transceiver", "--reason", "preStop") == "transceiver 101: draining"
    assert redis_client.get(drain_key("transceiver", 101)) == b"preStop"


def test_drain_without_an_id_outside_a_pod_is_refused(settings: Settings) -> None:
    settings.POD_INDEX = ""
    with pytest.raises(CommandError, match="which transceiver"):
        drain("transceiver")
    with pytest.raises(CommandError, match="which relay"):
        drain("relay")
