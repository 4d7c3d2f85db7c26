"""Reads for the dashboard: every region with its nodes, from the DB and the heartbeats in Redis.

A snapshot is plain JSON-ready data; the consumer pushes it every second. Packets per second come
from counter deltas between two snapshots (``packet_rates``, pure).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Q

from calls.models import LIVE_STATES, Session
from fleet.addresses import format_addr
from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from geo.models import Region
from relays.models import RelayShard
from relays.selectors import fleet_read, heartbeat_fresh
from transceivers.models import Transceiver

PACKET_COUNTERS = ("forwarded_in", "forwarded_out", "tcp_forwarded_in", "tcp_forwarded_out")
DROP_PREFIX = "drop_"
TCP_CLOSED_PREFIX = "tcp_closed_"  # ICE-TCP connections the relay ended, by reason

Sample = tuple[float, int]  # (heartbeat sent_at, packets forwarded so far) of one relay worker
RateState = tuple[float, int, float | None]  # a Sample and the packets/s last derived from it


def packet_rates(
    *, previous: Mapping[str, Sample], current: Mapping[str, Sample]
) -> dict[str, float]:
    """Packets/s per worker key from two samples; a restarted worker (counter went down) is 0."""
    rates: dict[str, float] = {}
    for key, (at, packets) in current.items():
        before = previous.get(key)
        if before is None or at <= before[0]:
            continue
        rates[key] = max(0, packets - before[1]) / (at - before[0])
    return rates



def _relay_row(relay: RelayShard, beats: list[RelayHeartbeat], now: float) -> dict[str, Any]:
    live = [b for b in beats if heartbeat_fresh(b.sent_at, now)]
    counters: dict[str, int] = defaultdict(int)
    for beat in live:
        for name, value in beat.counters.items():
            counters[name] += value
    return {
        "kind": "relay",
        "id": relay.shard_id,
        "state": relay.state,
        "up": bool(live),
        "public": format_addr((relay.public_host, relay.public_port)),
        "workers": len(live),
        "flows": sum(b.flows for b in live),
        "tcp": (format_addr((relay.public_host, relay.tcp_port))
                if relay.tcp_port is not None else None),
        "tcp_connections": counters["tcp_connections"],
        "tcp_closed": {
            name.removeprefix(TCP_CLOSED_PREFIX): value
            for name, value in sorted(counters.items())
            if name.startswith(TCP_CLOSED_PREFIX) and value
        },
        "sessions": getattr(relay, "live", 0),
        "packets": sum(counters[c] for c in PACKET_COUNTERS),
        "pps": None,
        "drops": {
            name.removeprefix(DROP_PREFIX): value
            for name, value in sorted(counters.items())
            if name.startswith(DROP_PREFIX) and value
        },
        "samples": {f"{b.shard}:{b.worker}": [b.sent_at, _packets(b)] for b in live},
    }


def _packets(beat: RelayHeartbeat) -> int:
    return sum(beat.counters.get(c, 0) for c in PACKET_COUNTERS)


def _transceiver_row(
    row: Transceiver, beat: TransceiverHeartbeat | None, now: float
) -> dict[str, Any]:
    up = beat is not None and heartbeat_fresh(beat.sent_at, now)
    live = getattr(row, "live", 0)
    return {
        "kind": "transceiver",
        "id": row.transceiver_id,
        "state": row.state,
        "up": up,
        "bind": format_addr((row.bind_host, row.bind_port)),
        "sessions": live,
        "connected": beat.connected if up and beat else 0,
        "capacity": row.capacity,
        "load": round(live / max(1, row.capacity), 3),
        "loop_lag_ms": round(beat.loop_lag_ms, 1) if up and beat else None,
        "draining": bool(beat and beat.draining) or row.state == "draining",
    }


def region_health(region: dict[str, Any]) -> str:
    """``disabled``, ``down`` (no live relay or transceiver), ``degraded`` (some down) or ``up``."""
    if not region["enabled"]:
        return "disabled"
    nodes = region["relays"] + region["transceivers"]
    relays_up = any(n["up"] for n in region["relays"])
    serving = any(n["up"] and not n["draining"] for n in region["transceivers"])
    if not relays_up or not serving:
        return "down"
    return "up" if all(n["up"] for n in nodes) else "degraded"


def fleet_snapshot() -> dict[str, Any]:
    """Every region (by code) with its relays and transceivers, load, health and counters."""
    now = time.time()
    live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
    relays = list(RelayShard.objects.annotate(live=live))
    transceivers = list(Transceiver.objects.annotate(live=live))
    beats = fleet_read(shards=[r.shard_id for r in relays],
                       transceivers=[t.transceiver_id for t in transceivers])
    relay_beats, transceiver_beats = beats.relays, beats.transceivers
    regions = []
    for region in Region.objects.order_by("code"):
        entry: dict[str, Any] = {
            "code": region.code, "name": region.name,
            "latitude": region.latitude, "longitude": region.longitude,
            "enabled": region.enabled, "is_default": region.is_default,
            "relays": [
                _relay_row(r, relay_beats.get(r.shard_id, []), now)
                for r in relays if r.region_id == region.pk
            ],
            "transceivers": [
                _transceiver_row(t, transceiver_beats.get(t.transceiver_id), now)
                for t in transceivers if t.region_id == region.pk
            ],
        }
        entry["sessions"] = sum(t["sessions"] for t in entry["transceivers"])
        entry["health"] = region_health(entry)
        regions.append(entry)
    return {"at": now, "regions": regions, "sessions": _recent_sessions()}


def _recent_sessions(limit: int = 8) -> list[dict[str, Any]]:
    rows = Session.objects.select_related("region", "relay", "transceiver")[:limit]
    return [
        {
            "id": str(s.id), "state": s.state, "region": s.region.code,
            "region_reason": s.region_reason, "relay": s.relay.shard_id,
            "transceiver": s.transceiver.transceiver_id, "created_at": s.created_at.isoformat(),
        }
        for s in rows
    ]


def snapshot_with_rates(
    snapshot: dict[str, Any], previous: Mapping[str, RateState]
) -> tuple[dict[str, Any], dict[str, RateState]]:
    """Fill each relay's ``pps`` from the previous state; return the state to keep.

    A heartbeat read twice (pushes and heartbeats both run every second) keeps its last rate.
    """
    state: dict[str, RateState] = {}
    for region in snapshot["regions"]:
        for relay in region["relays"]:
            current = {k: (float(v[0]), int(v[1])) for k, v in relay.pop("samples").items()}
            rates = packet_rates(
                previous={k: (v[0], v[1]) for k, v in previous.items()}, current=current
            )
            total: float | None = None
            for key, (at, packets) in current.items():
                before = previous.get(key)
                if key not in rates and before is not None and before[0] == at:
                    state[key] = before
                else:
                    state[key] = (at, packets, rates.get(key))
                rate = state[key][2]
                if rate is not None:
                    total = (total or 0.0) + rate
            relay["pps"] = None if total is None else round(total, 1)
    return snapshot, state
