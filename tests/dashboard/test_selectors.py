"""Fleet snapshot: heartbeats decide up/down, region health, counters and drops by reason."""

from __future__ import annotations

import time

import pytest
import redis

from calls.models import SessionState
from dashboard.selectors import fleet_snapshot, packet_rates, region_health, snapshot_with_rates
from relays.models import RelayShard
from tests.dashboard.fleet import (
    beat_relay,
    beat_transceiver,
    make_nodes,
    make_region,
    make_session,
)

pytestmark = [pytest.mark.django_db]


def test_packet_rates_from_counter_deltas() -> None:
    rates = packet_rates(
        previous={"1:0": (10.0, 100), "2:0": (10.0, 500)},
        current={"1:0": (12.0, 300), "2:0": (11.0, 20), "3:0": (11.0, 9)},
    )
    assert rates == {"1:0": 100.0, "2:0": 0.0}  # 2:0 restarted (counter went down), 3:0 is new


def test_packet_rates_ignore_a_repeated_heartbeat() -> None:
    assert packet_rates(previous={"1:0": (10.0, 100)}, current={"1:0": (10.0, 100)}) == {}


def _region(**nodes: list[dict[str, object]]) -> dict[str, object]:
    return {"enabled": True, "relays": nodes.get("relays", []),
            "transceivers": nodes.get("transceivers", [])}


def test_region_health_rules() -> None:
    up, down = {"up": True, "draining": False}, {"up": False, "draining": False}
    draining = {"up": True, "draining": True}
    assert region_health(_region(relays=[up], transceivers=[up])) == "up"
    assert region_health(_region(relays=[up], transceivers=[up, down])) == "degraded"
    assert region_health(_region(relays=[up], transceivers=[down])) == "down"
    assert region_health(_region(relays=[up], transceivers=[draining])) == "down"
    assert region_health(_region(relays=[], transceivers=[up])) == "down"
    disabled = {**_region(relays=[up], transceivers=[up]), "enabled": False}
    assert region_health(disabled) == "disabled"


def test_snapshot_reads_rows_and_heartbeats(redis_client: redis.Redis) -> None:
    eu, us = make_region("eu-west", lat=53.3, lon=-6.3, default=True), make_region("us-east")
    relay, xcvr = make_nodes(eu, 1)
    make_nodes(us, 2)
    make_session(relay, xcvr)
    make_session(relay, xcvr, state=SessionState.ENDED)
    beat_relay(redis_client, 1, packets=1000, drops={"bad_ufrag": 3})
    beat_transceiver(redis_client, 1)

    snapshot = fleet_snapshot()

    regions = {r["code"]: r for r in snapshot["regions"]}
    assert list(regions) == ["eu-west", "us-east"]
    eu_row = regions["eu-west"]
    assert eu_row["health"] == "up" and eu_row["sessions"] == 1
    assert eu_row["latitude"] == 53.3 and eu_row["is_default"]
    relay_row = eu_row["relays"][0]
    assert relay_row["up"] and relay_row["packets"] == 1000 and relay_row["sessions"] == 1
    assert relay_row["drops"] == {"bad_ufrag": 3}
    assert eu_row["transceivers"][0] | {"load": 0.1} == eu_row["transceivers"][0]
    assert regions["us-east"]["health"] == "down"  # rows, but no heartbeats
    assert not regions["us-east"]["transceivers"][0]["up"]
    assert len(snapshot["sessions"]) == 2
    assert relay_row["tcp"] is None and relay_row["tcp_connections"] == 0


def test_relay_row_shows_ice_tcp_connections_and_closes(redis_client: redis.Redis) -> None:
    region = make_region("local", default=True)
    relay, _ = make_nodes(region, 1)
    RelayShard.objects.filter(pk=relay.pk).update(tcp_port=443)
    beat_relay(redis_client, 1, packets=10, tcp={
        "connections": 7, "forwarded_in": 30, "forwarded_out": 60, "closed_first_timeout": 2000,
        "closed_idle": 0,
    })
    [row] = fleet_snapshot()["regions"][0]["relays"]
    assert (row["tcp"], row["tcp_connections"]) == ("127.0.0.1:443", 7)
    assert row["tcp_closed"] == {"first_timeout": 2000}
    assert row["packets"] == 100  # TCP packets count as forwarded packets too


def test_stale_heartbeat_counts_as_down(redis_client: redis.Redis) -> None:
    region = make_region("local", default=True)
    make_nodes(region, 1)
    beat_relay(redis_client, 1, sent_at=time.time() - 60)
    beat_transceiver(redis_client, 1)
    (row,) = fleet_snapshot()["regions"]
    assert not row["relays"][0]["up"] and row["health"] == "down"


def test_snapshot_with_rates_fills_packets_per_second(redis_client: redis.Redis) -> None:
    region = make_region("local", default=True)
    make_nodes(region, 1)
    now = time.time()
    beat_relay(redis_client, 1, packets=100, sent_at=now - 1)
    first, samples = snapshot_with_rates(fleet_snapshot(), {})
    assert first["regions"][0]["relays"][0]["pps"] is None
    beat_relay(redis_client, 1, packets=350, sent_at=now)
    second, samples2 = snapshot_with_rates(fleet_snapshot(), samples)
    relay = second["regions"][0]["relays"][0]
    assert relay["pps"] == pytest.approx(250.0, rel=0.01)
    assert "samples" not in relay
    again, _ = snapshot_with_rates(fleet_snapshot(), samples2)  # the same heartbeat read twice
    assert again["regions"][0]["relays"][0]["pps"] == pytest.approx(250.0, rel=0.01)
