"""Reads for health: probe memory, rebalancing holds, transition history."""

from __future__ import annotations

import json

from health.machine import ProbeMemory
from health.models import NodeTransition
from relays.registry import REBALANCE_HOLDS_KEY, health_key
from signaling_site.redis_client import get_redis


def node_memory(*, kind: str, node_id: int) -> ProbeMemory:
    return ProbeMemory.from_json(get_redis().get(health_key(kind, node_id)))


def rebalance_holds_get() -> dict[int, str]:
    """Transceivers held by the rebalancer (empty when the key expired: nothing is held)."""
    raw = get_redis().get(REBALANCE_HOLDS_KEY)
    return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def node_transitions(*, kind: str, node_id: int, limit: int = 20) -> list[NodeTransition]:
    return list(NodeTransition.objects.filter(kind=kind, node_id=node_id)[:limit])
