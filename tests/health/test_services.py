"""Health services and placement against the DB and a real Redis (probes faked or loopback)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from calls.models import Session, SessionState
from calls.selectors import region_capacity
from calls.services import placement_choose
from fleet.keys import drain_key
from fleet.nodes import NodeState
from health import services
from health.machine import ProbeResult
from health.models import NodeTransition
from health.selectors import node_memory, rebalance_holds_get
from relays.daemon import Relay
from relays.models import RelayShard
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


def test_transceiver_down_long_enough_fails_its_live_sessions_with_a_reason(
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
    assert live.state == SessionState.CONNECTED  # down just now: a pause keeps its calls
    lost_at = timezone.now() + timedelta(seconds=settings.HEALTH_SESSION_LOST_AFTER)
    assert services.transceiver_fail_if_lost(transceiver_id=1, now=lost_at) == [str(live.id)]
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

    from fleet.keys import transceiver_heartbeat_key

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


def test_resume_only_undoes_a_drain_but_clears_the_key_from_any_state(
    redis_client: redis.Redis,
) -> None:
    """Moved from the dashboard's own copy (deleted): the dashboard calls these services."""
    make_nodes(make_region("eu", default=True), 1)
    assert services.node_drain(kind="transceiver", node_id=1, reason="r")
    assert not services.node_drain(kind="transceiver", node_id=1, reason="r")
    Transceiver.objects.filter(transceiver_id=1).update(state=NodeState.DOWN)
    assert not services.node_resume(kind="transceiver", node_id=1, reason="back")
    assert state_of(1) == NodeState.DOWN  # the checker's call
    assert not redis_client.exists(drain_key("transceiver", 1))
    with pytest.raises(Transceiver.DoesNotExist):
        services.node_resume(kind="transceiver", node_id=7, reason="x")


# incarnations and reconcile: a real transceiver daemon on the real Redis ----------------------


async def _daemon_fleet(config: object) -> tuple[RelayShard, Transceiver]:
    from asgiref.sync import sync_to_async

    def rows() -> tuple[RelayShard, Transceiver]:
        relay, _ = make_nodes(make_region("eu", default=True), 1)
        xcvr = Transceiver.objects.create(
            transceiver_id=config.transceiver_id, region=relay.region,  # type: ignore[attr-defined]
            bind_host="127.0.0.1", bind_port=1, capacity=10,
        )
        return relay, xcvr

    return await sync_to_async(rows)()


async def _offer(daemon: object, session: Session) -> None:
    """A real offer through the control channel (the session never connects)."""
    from tests.transceivers.conftest import Client, credentials
    from transceivers import control

    client = Client()
    await control.request_answer(
        transceiver_id=daemon.config.transceiver_id,  # type: ignore[attr-defined]
        session_id=str(session.id), offer_sdp=await client.offer(), ufrag=session.ufrag,
        pwd=credentials()[1], relay_public=("127.0.0.1", 9), timeout=5,
    )
    await client.pc.close()


async def _state(session: Session) -> tuple[str, str, str]:
    row = await Session.objects.aget(id=session.id)
    return str(row.state), row.reason, row.transceiver_incarnation


@pytest.mark.django_db(transaction=True)
async def test_a_new_incarnation_fails_the_sessions_of_the_process_before(
    redis_url: str, redis_client: redis.Redis,
) -> None:
    """up restarts a SIGKILLed transceiver within a probe interval: no probe is missed, so the
    incarnation change is what fails the dead process's sessions (and tells their sockets)."""
    import asyncio

    from asgiref.sync import sync_to_async
    from channels import layers as channel_layers
    from channels.layers import get_channel_layer

    from fleet.keys import session_group
    from tests.dashboard.fleet import make_session
    from tests.transceivers.conftest import make_config, make_transceiver
    from transceivers.control import SessionEvent

    channel_layers.channel_layers.backends = {}
    config = make_config(redis_url)
    relay, xcvr = await _daemon_fleet(config)
    ghosts = [await sync_to_async(make_session)(relay, xcvr, SessionState.CONNECTED)
              for _ in range(2)]
    await Session.objects.filter(id__in=[g.id for g in ghosts]).aupdate(
        transceiver_incarnation="deadbeefdeadbeef")  # answered by the killed process
    await Transceiver.objects.filter(pk=xcvr.pk).aupdate(incarnation="deadbeefdeadbeef")
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(session_group(str(ghosts[0].id)), listener)
    async with make_transceiver(config) as daemon:
        fresh = await sync_to_async(make_session)(relay, xcvr, SessionState.NEW)
        await _offer(daemon, fresh)
        async with asyncio.timeout(5):  # the daemon records that it answered, and who
            while (await _state(fresh))[2] != daemon.incarnation:
                await asyncio.sleep(0.05)
        assert await sync_to_async(services.transceiver_check)(
            transceiver_id=config.transceiver_id, tick=1) == "healthy"
        for ghost in ghosts:
            assert await _state(ghost) == ("failed", "transceiver restarted", "deadbeefdeadbeef")
        assert (await _state(fresh))[0] == "answered"  # the live process's session stays
        row = await Transceiver.objects.aget(pk=xcvr.pk)
        assert row.incarnation == daemon.incarnation
        event = SessionEvent.parse(await asyncio.wait_for(layer.receive(listener), 5))
        assert (event.state, event.detail) == ("failed", "transceiver restarted")
        assert await sync_to_async(services.transceiver_check)(
            transceiver_id=config.transceiver_id, tick=2) is None  # nothing more to do


@pytest.mark.django_db(transaction=True)
async def test_reconcile_fails_what_the_transceiver_lost_and_closes_what_the_db_ended(
    redis_url: str, redis_client: redis.Redis, settings: object,
) -> None:
    import asyncio

    from asgiref.sync import sync_to_async
    from channels import layers as channel_layers

    from tests.dashboard.fleet import make_session
    from tests.transceivers.conftest import make_config, make_transceiver

    settings.HEALTH_RECONCILE_GRACE = 0.0  # type: ignore[attr-defined]
    channel_layers.channel_layers.backends = {}
    config = make_config(redis_url, heartbeat_interval=0.1)
    relay, xcvr = await _daemon_fleet(config)
    held, lost, ended = [await sync_to_async(make_session)(relay, xcvr, SessionState.ANSWERED)
                         for _ in range(3)]
    async with make_transceiver(config) as daemon:
        await _offer(daemon, held)
        await _offer(daemon, ended)
        await Session.objects.filter(id=ended.id).aupdate(state=SessionState.ENDED)
        await asyncio.sleep(0.3)  # a heartbeat carries the held ids
        failed, closed = await sync_to_async(services.transceiver_reconcile)(
            transceiver_id=config.transceiver_id)
        assert failed == [str(lost.id)] and closed == [str(ended.id)]
        assert (await _state(lost))[:2] == ("failed", "lost by transceiver")
        assert (await _state(held))[0] == "answered"
        assert daemon.sessions is not None
        async with asyncio.timeout(5):
            while daemon.sessions.get(str(ended.id)) is not None:
                await asyncio.sleep(0.05)
        assert daemon.sessions.get(str(held.id)) is not None
        await asyncio.sleep(0.3)
        assert await sync_to_async(services.transceiver_reconcile)(
            transceiver_id=config.transceiver_id) == ([], [])  # idempotent: converged
    assert await sync_to_async(services.transceiver_reconcile)(
        transceiver_id=config.transceiver_id) == ([], [])  # no heartbeat: no judgement


def test_rebalance_keeps_the_calls_of_a_transceiver_just_marked_down() -> None:
    """The rebalancer failed every live session of a down transceiver at once, so a pause just
    long enough to be marked down lost its calls: it honours HEALTH_SESSION_LOST_AFTER too."""
    from tests.dashboard.fleet import make_session

    relay, xcvr = make_nodes(make_region("eu", default=True), 1)
    live = make_session(relay, xcvr, state=SessionState.CONNECTED)
    record(1, 1, OK)
    record(1, 2, MISS)
    record(1, 3, MISS)
    services.rebalance(skew=0.2, ttl=10)
    live.refresh_from_db()
    assert live.state == SessionState.CONNECTED
    Transceiver.objects.filter(transceiver_id=1).update(
        state_changed_at=timezone.now() - timedelta(seconds=settings.HEALTH_SESSION_LOST_AFTER + 1)
    )
    services.rebalance(skew=0.2, ttl=10)
    live.refresh_from_db()
    assert live.state == SessionState.FAILED


def test_a_new_process_after_a_finished_drain_takes_sessions_but_a_pending_drain_stands(
    redis_client: redis.Redis,
) -> None:
    make_nodes(make_region("eu", default=True), 1)
    services.node_drain(kind="transceiver", node_id=1, reason="preStop")
    assert not services.node_resume_after_drain(kind="transceiver", node_id=1)  # key still set
    assert Transceiver.objects.get(transceiver_id=1).state == NodeState.DRAINING
    redis_client.delete(drain_key("transceiver", 1))  # what the drained process does as it exits
    assert services.node_resume_after_drain(kind="transceiver", node_id=1)
    row = Transceiver.objects.get(transceiver_id=1)
    assert (row.state, row.state_reason) == (NodeState.UNKNOWN, "restarted after its drain")
    assert not services.node_resume_after_drain(kind="transceiver", node_id=1)


@pytest.mark.django_db(transaction=True)
async def test_a_transceiver_that_answers_pings_is_alive_without_its_heartbeat(
    redis_url: str,
) -> None:
    """Redis restarted empty: the heartbeat is gone until the daemon's next beat, but the daemon
    answers its ping, so the probe passes (failing its sessions would end live calls); with no
    daemon the probe still fails, with the heartbeat as the reason."""
    import time

    from asgiref.sync import sync_to_async

    from health import probes
    from tests.transceivers.conftest import make_config, make_transceiver

    config = make_config(redis_url)
    probe = sync_to_async(probes.probe_transceiver)
    async with make_transceiver(config):
        result = await probe(transceiver_id=config.transceiver_id, heartbeat=None,
                             now=time.time(), max_age=5.0, timeout=2.0)
        assert result.ok and result.reason == "ok; no fresh heartbeat (none)", result
    result = await probe(transceiver_id=config.transceiver_id, heartbeat=None, now=time.time(),
                         max_age=5.0, timeout=0.3)
    assert not result.ok and result.reason == "no fresh heartbeat (none)"
