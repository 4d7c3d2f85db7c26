"""Reads of the fleet's heartbeats in Redis (records and key names: ``fleet``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat, is_fresh
from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from fleet.nodes import MAX_RELAY_WORKERS
from fleet.redis_client import shared_redis


@dataclass(frozen=True)
class FleetRead:
    """Heartbeats of some relay shards and transceivers, and the raw values of other keys, as
    one ``MGET`` found them."""

    relays: dict[int, list[RelayHeartbeat]]  # every worker heartbeat still in Redis, by shard
    transceivers: dict[int, TransceiverHeartbeat]  # by transceiver id, present ones only
    others: list[bytes | str | None]  # the values of ``also``, in order (None: no such key)


def fleet_read(
    *, shards: Sequence[int] = (), transceivers: Sequence[int] = (), also: Sequence[str] = ()
) -> FleetRead:
    """The heartbeats of ``shards`` and ``transceivers`` and the values of keys ``also``, in
    one Redis round trip (one ``MGET``; none at all when nothing is asked)."""
    relay_keys = [relay_heartbeat_key(s, w) for s in shards for w in range(MAX_RELAY_WORKERS)]
    keys = [*relay_keys, *(transceiver_heartbeat_key(i) for i in transceivers), *also]
    values = shared_redis(settings.REDIS_URL).mget(keys) if keys else []
    relays: dict[int, list[RelayHeartbeat]] = defaultdict(list)
    for value in values[:len(relay_keys)]:
        if value:
            beat = RelayHeartbeat.from_json(value)
            relays[beat.shard].append(beat)
    tail = values[len(relay_keys):]
    found = zip(transceivers, tail[:len(transceivers)], strict=True)
    return FleetRead(relays, {i: TransceiverHeartbeat.from_json(v) for i, v in found if v},
                     list(tail[len(transceivers):]))


def relay_heartbeats(*, shards: list[int]) -> dict[int, list[RelayHeartbeat]]:
    """Every worker heartbeat still in Redis, by shard (one MGET)."""
    return fleet_read(shards=shards).relays


def transceiver_heartbeats(*, ids: list[int]) -> dict[int, TransceiverHeartbeat]:
    """The heartbeats still in Redis of transceivers ``ids`` (one MGET)."""
    return fleet_read(transceivers=ids).transceivers


def heartbeat_fresh(sent_at: float, now: float) -> bool:
    """Signaling's and the dashboard's reading of the one freshness rule (settings' max age)."""
    return is_fresh(sent_at, now=now, max_age=settings.HEALTH_HEARTBEAT_MAX_AGE)
