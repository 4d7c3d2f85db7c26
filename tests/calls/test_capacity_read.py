"""``region_capacity`` against the DB and a real Redis: one statement for the region's relays and
transceivers with their counts, the same rows and counts as the models give."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls.models import Session, SessionState
from calls.selectors import region_capacity
from fleet.nodes import NodeState
from geo.models import Region
from relays.models import RelayShard
from tests.dashboard.fleet import (
    beat_relay,
    beat_transceiver,
    make_nodes,
    make_region,
    make_session,
)
from transceivers.models import Transceiver

pytestmark = pytest.mark.django_db


def _fleet(client: redis.Redis) -> None:
    """Region eu: relays 1 (healthy), 2 (down) and 3 (healthy, no beat); transceivers 1 and 2
    with live, pending and ended sessions; region us with its own node 9."""
    eu, us = make_region("eu", lat=50, lon=0, default=True), make_region("us", lat=40, lon=-75)
    relay1, xcvr1 = make_nodes(eu, 1)
    relay2, xcvr2 = make_nodes(eu, 2)
    relay3 = RelayShard.objects.create(shard_id=3, region=eu, public_host="::1", public_port=3,
                                       internal_host="127.0.0.1", internal_port=4, tcp_port=443)
    make_nodes(us, 9)
    for node in (1, 2, 9):
        beat_relay(client, node)
        beat_transceiver(client, node)
    RelayShard.objects.update(state=NodeState.HEALTHY)
    RelayShard.objects.filter(shard_id=2).update(state=NodeState.DOWN)
    Transceiver.objects.update(state=NodeState.HEALTHY)
    for _ in range(3):
        make_session(relay1, xcvr1, state=SessionState.CONNECTED)
    make_session(relay1, xcvr1, state=SessionState.ANSWERED)  # live and pending
    stale = make_session(relay2, xcvr1, state=SessionState.NEW)  # live, too old to be pending
    Session.objects.filter(pk=stale.pk).update(created_at=stale.created_at - timedelta(hours=1))
    for _ in range(5):
        make_session(relay1, xcvr1, state=SessionState.ENDED)
        make_session(relay3, xcvr2, state=SessionState.FAILED)
    make_session(relay3, xcvr2, state=SessionState.NEW)


def test_one_statement_reads_relays_and_transceivers_with_their_counts(
    redis_client: redis.Redis,
) -> None:
    _fleet(redis_client)
    eu = Region.objects.get(code="eu")
    with CaptureQueriesContext(connection) as queries:
        capacity = region_capacity(region=eu)
    assert len(queries.captured_queries) == 1, queries.captured_queries
    assert [(r.shard_id, r.live) for r in capacity.all_relays] == [  # type: ignore[attr-defined]
        (1, 4), (2, 1), (3, 1)]
    assert [r.shard_id for r in capacity.relays] == [1]  # 2 is down, 3 sends no heartbeat
    stored = RelayShard.objects.get(shard_id=3)
    read = capacity.all_relays[2]
    assert [getattr(read, f.attname) for f in RelayShard._meta.concrete_fields] == [
        getattr(stored, f.attname) for f in RelayShard._meta.concrete_fields]
    assert read._state.adding is False and read._state.db == stored._state.db
    loads = [(t.transceiver.transceiver_id, t.live_sessions, t.pending, t.pending_cap,
              t.heartbeat is not None) for t in capacity.transceivers]
    assert loads == [(1, 5, 1, 5, True), (2, 1, 1, 5, True)]
    stored_x = Transceiver.objects.get(transceiver_id=1)
    read_x = capacity.transceivers[0].transceiver
    assert [getattr(read_x, f.attname) for f in Transceiver._meta.concrete_fields] == [
        getattr(stored_x, f.attname) for f in Transceiver._meta.concrete_fields]
    assert capacity.available[0].transceiver.transceiver_id == 2  # the less loaded


def test_excluded_transceivers_are_left_out_and_relays_kept(redis_client: redis.Redis) -> None:
    _fleet(redis_client)
    eu = RelayShard.objects.get(shard_id=1).region
    capacity = region_capacity(region=eu, exclude=[1])
    assert [t.transceiver.transceiver_id for t in capacity.transceivers] == [2]
    assert [r.shard_id for r in capacity.all_relays] == [1, 2, 3]


def test_a_region_without_nodes_reads_empty(redis_client: redis.Redis) -> None:
    empty = make_region("ap")
    capacity = region_capacity(region=empty)
    assert capacity.all_relays == () and capacity.transceivers == ()
    assert capacity.status == "no_relay"
