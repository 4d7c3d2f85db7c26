"""``manage.py drain``: stored state, the daemon's key, resume, unknown nodes, --wait."""

from __future__ import annotations

from io import StringIO

import pytest
import redis
from django.core.management import CommandError, call_command

from relays.models import NodeState, RelayShard
from relays.registry import drain_key
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
