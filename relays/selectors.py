"""Reads of the fleet's heartbeats in Redis (record formats and key names: ``registry``)."""

from __future__ import annotations

from collections import defaultdict

from relays.registry import (
    RelayHeartbeat,
    TransceiverHeartbeat,
    relay_heartbeat_key,
    transceiver_heartbeat_key,
)
from signaling_site.redis_client import get_redis

MAX_RELAY_WORKERS = 16  # worker heartbeat keys looked at per shard


def relay_heartbeats(*, shards: list[int]) -> dict[int, list[RelayHeartbeat]]:
    """Every worker heartbeat still in Redis, by shard (one MGET)."""
    keys = [relay_heartbeat_key(s, w) for s in shards for w in range(MAX_RELAY_WORKERS)]
    beats: dict[int, list[RelayHeartbeat]] = defaultdict(list)
    for value in get_redis().mget(keys) if keys else []:
        if value:
            beat = RelayHeartbeat.from_json(value)
            beats[beat.shard].append(beat)
    return beats


def transceiver_heartbeats(*, ids: list[int]) -> dict[int, TransceiverHeartbeat]:
    """The heartbeats still in Redis of transceivers ``ids`` (one MGET)."""
    if not ids:
        return {}
    values = get_redis().mget([transceiver_heartbeat_key(i) for i in ids])
    return {i: TransceiverHeartbeat.from_json(v) for i, v in zip(ids, values, strict=True) if v}
