"""Rows and heartbeats of a small fleet, shared by the dashboard and consumer tests."""

from __future__ import annotations

import time

import redis

from calls.models import Session, SessionState
from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from geo.models import Region
from relays.models import RelayShard
from transceivers.models import Transceiver


def make_region(code: str, *, lat: float = 0.0, lon: float = 0.0, default: bool = False) -> Region:
    return Region.objects.create(
        code=code, name=code.title(), latitude=lat, longitude=lon, is_default=default
    )


def make_nodes(region: Region, node_id: int) -> tuple[RelayShard, Transceiver]:
    relay = RelayShard.objects.create(
        shard_id=node_id, region=region, public_host="127.0.0.1", public_port=3000 + node_id,
        internal_host="127.0.0.1", internal_port=4000 + node_id,
    )
    xcvr = Transceiver.objects.create(
        transceiver_id=node_id, region=region, bind_host="127.0.0.1", bind_port=5000 + node_id,
        capacity=10,
    )
    return relay, xcvr


def make_session(
    relay: RelayShard, xcvr: Transceiver, state: str = SessionState.ANSWERED
) -> Session:
    return Session.objects.create(
        region=relay.region, relay=relay, transceiver=xcvr, state=state,
        region_reason="nearest", ufrag=f"u{Session.objects.count()}xyzxyzxyz",
    )


def beat_relay(
    client: redis.Redis, shard: int, *, packets: int = 0, drops: dict[str, int] | None = None,
    sent_at: float | None = None, tcp: dict[str, int] | None = None,
) -> None:
    counters = {"forwarded_in": packets // 2, "forwarded_out": packets - packets // 2}
    counters.update({f"tcp_{k}": v for k, v in (tcp or {}).items()})
    counters.update({f"drop_{k}": v for k, v in (drops or {}).items()})
    beat = RelayHeartbeat(
        shard=shard, worker=0, public="127.0.0.1:1", internal="127.0.0.1:2", pid=1, flows=1,
        counters=counters, sent_at=time.time() if sent_at is None else sent_at,
    )
    client.set(relay_heartbeat_key(shard, 0), beat.to_json(), ex=5)


def beat_transceiver(client: redis.Redis, transceiver_id: int, *, draining: bool = False) -> None:
    beat = TransceiverHeartbeat(
        transceiver_id=transceiver_id, bind="127.0.0.1:1", pid=1, sessions=1, connected=1,
        capacity=10, loop_lag_ms=0.4, draining=draining, sent_at=time.time(),
    )
    client.set(transceiver_heartbeat_key(transceiver_id), beat.to_json(), ex=5)
