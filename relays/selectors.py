"""Reads of the fleet's heartbeats in Redis (records and key names: ``fleet``)."""

from __future__ import annotations

from collections import defaultdict

from django.conf import settings

from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat, is_fresh
from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from fleet.nodes import MAX_RELAY_WORKERS
from fleet.redis_client import shared_redis


def relay_heartbeats(*, shards: list[int]) -> dict[int, list[RelayHeartbeat]]:
    """Every worker heartbeat still in Redis, by shard (one MGET)."""
    keys = [relay_heartbeat_key(s, w) for s in shards for w in range(MAX_RELAY_WORKERS)]
    beats: dict[int, list[RelayHeartbeat]] = defaultdict(list)
    for value in shared_redis(settings.REDIS_URL).mget(keys) if keys else []:
        if value:
            beat = RelayHeartbeat.from_json(value)
            beats[beat.shard].append(beat)
    return beats


def transceiver_heartbeats(*, ids: list[int]) -> dict[int, TransceiverHeartbeat]:
    """The heartbeats still in Redis of transceivers ``ids`` (one MGET)."""
    if not ids:
        return {}
    values = shared_redis(settings.REDIS_URL).mget([transceiver_heartbeat_key(i) for i in ids])
    return {i: TransceiverHeartbeat.from_json(v) for i, v in zip(ids, values, strict=True) if v}


def heartbeat_fresh(sent_at: float, now: float) -> bool:
    """Signaling's and the dashboard's reading of the one freshness rule (settings' max age)."""
    return is_fresh(sent_at, now=now, max_age=settings.HEALTH_HEARTBEAT_MAX_AGE)
