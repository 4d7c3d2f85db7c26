"""Health services and placement against the DB and a real Redis (probes faked or loopback)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis
from django.conf import settings

from calls.models import Session, SessionState
from calls.selectors import placement_choose, region_capacity
from health import services
from health.machine import ProbeResult
from health.models import NodeTransition
from health.selectors import node_memory, rebalance_holds_get
from relays.daemon import Relay
from relays.models import NodeState, RelayShard
from relays.registry import drain_key
from tests.dashboard.fleet import beat_relay, beat_transceiver, make_nodes, make_region
from tests.relays.test_daemon import make_config as relay_config
from transceivers.models import Transceiver

pytestmark = pytest.mark.django_db
MISS = ProbeResult(False, "no ping reply in 1s")
OK = ProbeResult(True, rtt_ms=1.0, load=0.1)


def record(node_id: int, tick: int, result: ProbeResult, kind: str = "transceiver") -> str | None:
    return services.node_record_probe(kind=kind, node_id=node_id, tick=tick, result=result)


def state_of(transceiver_id: int) -> str:
    return Transceiver.objects.get(transceiver_id=transceiver_id).state


def test_probe_of_a_tick_is_recorded_once(redis_client: redis.Redis) -> None:
    make_nodes(make_region("eu", default=True), 1)
    assert record(1, 10, OK) == "healthy"
    assert record(1, 11, MISS) == "suspect"
    assert record(1, 11, MISS) is None  # the same probe run twice: nothing changes
    assert record(1, 11, MISS) is None
    assert node_memory(kind="transceiver", node_id=1).failures == 1
    assert state_of(1) == NodeState.SUSPECT
    assert record(1, 9, MISS) is None  # a late run of an old slot
    assert record(1, 12, MISS) == "down"
    transitions = list(NodeTransition.objects.order_by("id").values_list("from_state", "to_state"))
    assert transitions == [("unknown", "healthy"), ("healthy", "suspect"), ("suspect", "down")]
    row = Transceiver.objects.get(transceiver_id=1)
    assert row.state_reason == "2 missed probes: no ping reply in 1s" and row.state_changed_at


def test_down_transceiver_fails_its_live_sessions_with_a_reason(
    redis_client: redis.Redis,
) -> None:
    from tests.dashboard.fleet import make_session

    relay, xcvr = make_nodes(make_region("eu", default=True), 1)
    live = make_session(relay, xcvr, state=SessionState.CONNECTED)
    ended = make_session(relay, xcvr, state=SessionState.ENDED)
    record(1, 1, OK)
    record(1, 2, MISS)
    record(1, 3, MISS)
    live.refresh_from_db()
    ended.refresh_from_db()
    assert live.state == SessionState.FAILED
    assert live.reason == "transceiver 1 down: 2 missed probes: no ping reply in 1s"
    assert ended.state == SessionState.ENDED


def test_transition_is_state_filtered() -> None:
    make_nodes(make_region("eu", default=True), 1)
    kwargs = {"kind": "transceiver", "node_id": 1, "to_state": "down", "reason": "x"}
    assert not services.node_transition(from_state="healthy", **kwargs)  # it is unknown
    assert services.node_transition(from_state="unknown", **kwargs)
    assert not services.node_transition(from_state="unknown", **kwargs)
    assert NodeTransition.objects.count() == 1


def _healthy_fleet(client: redis.Redis) -> None:
    near, far = make_region("eu", lat=50, lon=0, default=True), make_region("us", lat=40, lon=-75)
    for region, node_id in ((near, 1), (near, 2), (far, 3)):
        make_nodes(region, node_id)
        beat_relay(client, node_id)
        beat_transceiver(client, node_id)
    RelayShard.objects.update(state=NodeState.HEALTHY)
    Transceiver.objects.update(state=NodeState.HEALTHY)


def _ranked() -> list[tuple[object, str]]:
    from geo.models import Region

    return [(Region.objects.get(code="eu"), "nearest"), (Region.objects.get(code="us"), "nearest")]


@pytest.mark.parametrize("state", ["down", "suspect", "draining", "full"])
def test_placement_skips_transceivers_that_are_not_healthy(
    redis_client: redis.Redis, state: str
) -> None:
    _healthy_fleet(redis_client)
    Transceiver.objects.filter(transceiver_id=1).update(state=state)
    for _ in range(3):
        placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
        assert placement is not None and placement.transceiver.transceiver_id == 2


def test_placement_skips_a_transceiver_whose_heartbeat_is_stale(
    redis_client: redis.Redis, settings: object
) -> None:
    _healthy_fleet(redis_client)
    import json
    import time

    from relays.registry import transceiver_heartbeat_key

    key = transceiver_heartbeat_key(1)
    beat = json.loads(redis_client.get(key) or b"{}")
    beat["sent_at"] = time.time() - 60  # the process hung: its last beat is old
    redis_client.set(key, json.dumps(beat))
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None and placement.transceiver.transceiver_id == 2


def test_full_region_spills_to_the_next_with_the_reason(redis_client: redis.Redis) -> None:
    _healthy_fleet(redis_client)
    Transceiver.objects.filter(transceiver_id=1).update(state=NodeState.FULL)
    Transceiver.objects.filter(transceiver_id=2).update(capacity=0)  # at capacity by count
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None
    assert (placement.region.code, placement.region_reason) == ("us", "fallback:eu-full")
    Transceiver.objects.filter(region__code="eu").update(state=NodeState.DOWN)
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None and placement.region_reason == "fallback:eu-no_transceiver"


def test_down_relay_shard_is_replaced_by_another_of_the_region(
    redis_client: redis.Redis,
) -> None:
    _healthy_fleet(redis_client)
    RelayShard.objects.filter(shard_id=1).update(state=NodeState.DOWN)
    for _ in range(3):
        placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
        assert placement is not None and placement.relay.shard_id == 2
    capacity = region_capacity(region=placement.region)
    assert [r.shard_id for r in capacity.all_relays] == [1, 2]


def test_rebalance_holds_the_most_loaded_without_refusing_anyone(
    redis_client: redis.Redis,
) -> None:
    from tests.dashboard.fleet import make_session

    _healthy_fleet(redis_client)
    relay = RelayShard.objects.get(shard_id=1)
    busy = Transceiver.objects.get(transceiver_id=1)
    for _ in range(5):
        make_session(relay, busy, state=SessionState.CONNECTED)  # 5/10 vs 0/10
    holds = services.rebalance(skew=0.2, ttl=10)
    assert list(holds) == [1] and rebalance_holds_get() == holds
    assert services.rebalance(skew=0.2, ttl=10) == holds  # idempotent
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None and placement.transceiver.transceiver_id == 2
    Transceiver.objects.filter(transceiver_id=2).update(state=NodeState.DOWN)
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None and placement.transceiver.transceiver_id == 1  # held, not shut
    Session.objects.update(state=SessionState.ENDED)
    Transceiver.objects.filter(transceiver_id=2).update(state=NodeState.HEALTHY)
    assert services.rebalance(skew=0.2, ttl=10) == {} and rebalance_holds_get() == {}


def test_drain_and_resume_set_state_history_and_the_daemons_key(
    redis_client: redis.Redis,
) -> None:
    _healthy_fleet(redis_client)
    assert services.node_drain(kind="transceiver", node_id=1, reason="maintenance")
    assert not services.node_drain(kind="transceiver", node_id=1, reason="again")
    assert state_of(1) == NodeState.DRAINING
    assert redis_client.get(drain_key("transceiver", 1)) == b"maintenance"
    placement = placement_choose(ranked=_ranked())  # type: ignore[arg-type]
    assert placement is not None and placement.transceiver.transceiver_id == 2
    assert services.node_resume(kind="transceiver", node_id=1, reason="done")
    assert state_of(1) == NodeState.UNKNOWN and not redis_client.exists(drain_key("transceiver", 1))
    with pytest.raises(Transceiver.DoesNotExist):
        services.node_drain(kind="transceiver", node_id=99, reason="x")


@pytest.mark.django_db(transaction=True)
async def test_relay_check_goes_through_the_real_relay_port(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from asgiref.sync import sync_to_async

    config = replace(relay_config(redis_url), shard=5, keyring=settings.UFRAG_KEYRING)
    async with Relay(config) as relay:
        host, port = relay.public_addr
        await sync_to_async(_relay_row)(5, host, port)
        await relay.heartbeat()
        assert await sync_to_async(services.relay_check)(shard_id=5, tick=1) == "healthy"
        memory = await sync_to_async(node_memory)(kind="relay", node_id=5)
        assert memory.rtt_ms is not None and 0 < memory.rtt_ms < 1000
        assert relay.health_answered == 1 and len(relay.flows) == 0
    # The relay is gone: the STUN probe gets no answer (port unreachable or timeout).
    assert await sync_to_async(services.relay_check)(shard_id=5, tick=2) == "suspect"
    memory = await sync_to_async(node_memory)(kind="relay", node_id=5)
    assert memory.failures == 1 and "STUN" in memory.reason


def _relay_row(shard: int, host: str, port: int) -> None:
    region = make_region("solo", default=True)
    RelayShard.objects.create(shard_id=shard, region=region, public_host=host, public_port=port,
                              internal_host="127.0.0.1", internal_port=1)
