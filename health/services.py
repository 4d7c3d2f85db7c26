"""Writes for health: record probes, change node state (with history), drain, rebalance.

Every write is idempotent: probe memory is compare-and-set on the probe tick, state changes are
filtered on the state they leave, session failures on live states, holds are a full overwrite.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from calls.models import LIVE_STATES
from calls.services import sessions_fail_on_transceiver
from health import probes
from health.machine import (
    ProbeMemory,
    ProbeResult,
    Thresholds,
    next_state,
    rebalance_holds,
    remember,
)
from health.models import NodeKind, NodeTransition
from health.selectors import rebalance_holds_get
from relays.models import NodeState, RelayShard
from relays.registry import REBALANCE_HOLDS_KEY, drain_key, health_key
from relays.selectors import relay_heartbeats, transceiver_heartbeats
from signaling_site.redis_client import get_redis
from transceivers.models import Transceiver

logger = logging.getLogger(__name__)

MEMORY_TTL = 3600  # seconds; probe memory of a node nobody probes any more goes away


def thresholds() -> Thresholds:
    return Thresholds(
        suspect_after=settings.HEALTH_SUSPECT_AFTER, down_after=settings.HEALTH_DOWN_AFTER,
        recover_after=settings.HEALTH_RECOVER_AFTER,
    )


def _model(kind: str) -> type[RelayShard] | type[Transceiver]:
    return RelayShard if kind == NodeKind.RELAY else Transceiver


def _id_field(kind: str) -> str:
    return "shard_id" if kind == NodeKind.RELAY else "transceiver_id"


def node_transition(
    *, kind: str, node_id: int, from_state: str, to_state: str, reason: str,
    at: datetime | None = None,
) -> bool:
    """Move a node from ``from_state`` to ``to_state`` and record it; False if it was not there.

    A transceiver going down fails its live sessions with the reason.
    """
    at = at or timezone.now()
    with transaction.atomic():
        moved = _model(kind).objects.filter(
            **{_id_field(kind): node_id, "state": from_state}
        ).update(state=to_state, state_reason=reason[:200], state_changed_at=at)
        if not moved:
            return False
        transition = NodeTransition(
            kind=kind, node_id=node_id, from_state=from_state, to_state=to_state,
            reason=reason[:200], at=at,
        )
        transition.full_clean()
        transition.save()
        if kind == NodeKind.TRANSCEIVER and to_state == NodeState.DOWN:
            failed = sessions_fail_on_transceiver(
                transceiver_id=node_id, reason=f"transceiver {node_id} down: {reason}"
            )
            if failed:
                logger.warning("transceiver %s down: failed %d live sessions", node_id, failed)
    logger.info("%s %s: %s -> %s (%s)", kind, node_id, from_state, to_state, reason)
    return True


def _remember_once(kind: str, node_id: int, result: ProbeResult, tick: int) -> ProbeMemory | None:
    """Compare-and-set the node's probe memory for ``tick``; None if that tick was recorded."""
    key = health_key(kind, node_id)
    recorded: list[ProbeMemory] = []

    def update(pipe: redis.client.Pipeline) -> None:
        recorded.clear()  # WATCH retries call this again
        try:
            memory = remember(ProbeMemory.from_json(pipe.get(key)), result, tick=tick,
                              now=time.time())
        except ValueError:  # stale tick: a duplicate or late run of the same probe
            return
        pipe.multi()
        pipe.set(key, memory.to_json(), ex=MEMORY_TTL)
        recorded.append(memory)

    get_redis().transaction(update, key)
    return recorded[0] if recorded else None


def node_record_probe(*, kind: str, node_id: int, tick: int, result: ProbeResult) -> str | None:
    """Record a probe of ``tick`` and apply the state machine; the new state if it changed."""
    rows = _model(kind).objects.filter(**{_id_field(kind): node_id})
    row = rows.only("state", "state_reason").first()
    if row is None:
        return None
    memory = _remember_once(kind, node_id, result, tick)
    if memory is None:
        return None
    state, reason = next_state(row.state, result, memory, thresholds())
    if result.ok and row.state == NodeState.DRAINING and not result.draining:
        get_redis().set(drain_key(kind, node_id), row.state_reason or "draining")  # dashboard
    if state != row.state and node_transition(
        kind=kind, node_id=node_id, from_state=row.state, to_state=state, reason=reason
    ):
        return str(state)
    return None


def relay_check(*, shard_id: int, tick: int) -> str | None:
    """Probe relay shard ``shard_id`` end to end and record it."""
    relay = RelayShard.objects.filter(shard_id=shard_id).first()
    if relay is None:
        return None
    key_id = settings.UFRAG_MINT_KEY_ID
    result = probes.probe_relay(
        public=(relay.public_host, relay.public_port), shard=shard_id,
        heartbeats=relay_heartbeats(shards=[shard_id]).get(shard_id, []), now=time.time(),
        max_age=settings.HEALTH_HEARTBEAT_MAX_AGE, keyring=settings.UFRAG_KEYRING,
        key_id=key_id, timeout=settings.HEALTH_PROBE_TIMEOUT,
    )
    return node_record_probe(kind=NodeKind.RELAY, node_id=shard_id, tick=tick, result=result)


def transceiver_check(*, transceiver_id: int, tick: int) -> str | None:
    """Probe transceiver ``transceiver_id`` (heartbeat + control ping) and record it."""
    if not Transceiver.objects.filter(transceiver_id=transceiver_id).exists():
        return None
    beat = transceiver_heartbeats(ids=[transceiver_id]).get(transceiver_id)
    result = probes.probe_transceiver(
        transceiver_id=transceiver_id, heartbeat=beat, now=time.time(),
        max_age=settings.HEALTH_HEARTBEAT_MAX_AGE, timeout=settings.HEALTH_PROBE_TIMEOUT,
    )
    return node_record_probe(
        kind=NodeKind.TRANSCEIVER, node_id=transceiver_id, tick=tick, result=result
    )


def node_drain(*, kind: str, node_id: int, reason: str) -> bool:
    """Stop new sessions on a node and ask its daemon to drain; False if already draining.

    ``DoesNotExist`` for an unknown node. The DB state goes first: placement stops at once.
    """
    row = _model(kind).objects.get(**{_id_field(kind): node_id})
    changed = row.state != NodeState.DRAINING and node_transition(
        kind=kind, node_id=node_id, from_state=row.state, to_state=NodeState.DRAINING,
        reason=reason,
    )
    get_redis().set(drain_key(kind, node_id), reason, nx=True)  # the first reason stands
    return changed


def node_resume(*, kind: str, node_id: int, reason: str) -> bool:
    """Cancel a drain: the daemon takes sessions again; the next probes confirm its health."""
    _model(kind).objects.get(**{_id_field(kind): node_id})
    get_redis().delete(drain_key(kind, node_id))
    return node_transition(
        kind=kind, node_id=node_id, from_state=NodeState.DRAINING, to_state=NodeState.UNKNOWN,
        reason=reason,
    )


def rebalance(*, skew: float, ttl: float) -> dict[int, str]:
    """Hold skewed transceivers per region (no new sessions until they fall back); fail live
    sessions left on down transceivers. Returns the holds."""
    held = rebalance_holds_get()
    live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
    rows = Transceiver.objects.annotate(live=live).only("transceiver_id", "region", "capacity",
                                                        "state")
    by_region: dict[int, dict[int, float]] = {}
    for row in rows:
        if row.state == NodeState.DOWN:
            sessions_fail_on_transceiver(
                transceiver_id=row.transceiver_id,
                reason=f"transceiver {row.transceiver_id} down: {row.state_reason}",
            )
        elif row.state in (NodeState.HEALTHY, NodeState.FULL):
            loads = by_region.setdefault(row.region_id, {})
            loads[row.transceiver_id] = row.live / max(1, row.capacity)  # type: ignore[attr-defined]
    holds: dict[int, str] = {}
    for loads in by_region.values():
        holds.update(rebalance_holds(loads, held=held, skew=skew))
    redis_client = get_redis()
    if holds:
        redis_client.set(REBALANCE_HOLDS_KEY, json.dumps(holds), px=max(1, int(ttl * 1000)))
    else:
        redis_client.delete(REBALANCE_HOLDS_KEY)
    for node in holds.keys() - held.keys():
        logger.info("rebalance: hold transceiver %s (%s)", node, holds[node])
    return holds
