"""Writes for health: record probes, change node state (with history), drain, rebalance, and
make the DB's sessions agree with the live transceivers (incarnations, reconcile).

Every write is idempotent: probe memory is compare-and-set on the probe tick, state changes are
filtered on the state they leave, session failures on live states, a transceiver's incarnation is
compare-and-set, holds are a full overwrite.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from calls.models import LIVE_STATES
from calls.services import sessions_fail
from fleet.keys import REBALANCE_HOLDS_KEY, drain_key, health_key
from fleet.nodes import NodeKind, NodeState
from fleet.redis_client import shared_redis
from health import probes
from health.machine import (
    ProbeMemory,
    ProbeResult,
    Thresholds,
    next_state,
    rebalance_holds,
    remember,
)
from health.models import NodeTransition
from health.selectors import rebalance_holds_get, sessions_live_ids
from relays.models import RelayShard
from relays.selectors import relay_heartbeats, transceiver_heartbeats
from transceivers.control import (
    ControlError,
    EventState,
    SessionEvent,
    call_sync,
    request_close,
)
from transceivers.models import Transceiver
from transceivers.reporting import ChannelEventSink
from transceivers.selectors import transceiver_sessions_held

logger = logging.getLogger(__name__)

MEMORY_TTL = 3600  # seconds; probe memory of a node nobody probes any more goes away
RESTARTED = "transceiver restarted"
LOST = "lost by transceiver"


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

    A transceiver that stays down fails its sessions later (``transceiver_fail_if_lost``).
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

    shared_redis(settings.REDIS_URL).transaction(update, key)
    return recorded[0] if recorded else None


async def _publish_failed(events: list[SessionEvent]) -> None:
    sink = ChannelEventSink()
    for event in events:
        await sink.publish(event)


def _fail_sessions(
    *, transceiver_id: int, reason: str, incarnation: str | None = None,
    session_ids: Iterable[str] | None = None,
) -> list[str]:
    """Fail live sessions (``calls.services.sessions_fail``) and, once committed, tell each
    session's WebSocket subscribers (a ``failed`` event with the reason)."""
    failed = sessions_fail(transceiver_id=transceiver_id, reason=reason, incarnation=incarnation,
                           session_ids=session_ids)
    if failed:
        now = time.time()
        events = [SessionEvent(sid, EventState.FAILED, reason, now) for sid in failed]
        transaction.on_commit(lambda: async_to_sync(_publish_failed)(events))
    return failed


def node_record_probe(*, kind: str, node_id: int, tick: int, result: ProbeResult) -> str | None:
    """Record a probe of ``tick`` and apply the state machine; the new state if it changed."""
    rows = _model(kind).objects.filter(**{_id_field(kind): node_id})
    row = rows.only("state", "state_reason").first()
    if row is None:
        return None
    memory = _remember_once(kind, node_id, result, tick)
    if memory is None:
        return None
    drain_requested = bool(shared_redis(settings.REDIS_URL).exists(drain_key(kind, node_id)))
    state, reason = next_state(row.state, result, memory, thresholds(),
                               drain_requested=drain_requested)
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
    changed = node_record_probe(
        kind=NodeKind.TRANSCEIVER, node_id=transceiver_id, tick=tick, result=result
    )
    if result.ok and result.incarnation:
        transceiver_follow_incarnation(transceiver_id=transceiver_id,
                                       incarnation=result.incarnation)
    transceiver_fail_if_lost(transceiver_id=transceiver_id, now=timezone.now())
    return changed


def transceiver_fail_if_lost(*, transceiver_id: int, now: datetime) -> list[str]:
    """Fail the live sessions of a transceiver down for ``HEALTH_SESSION_LOST_AFTER`` s.

    Not at the moment it goes down: a process paused for a second or two (GC, a busy host)
    comes back holding its calls, and failing them would make reconcile close live calls."""
    lost_after = timedelta(seconds=settings.HEALTH_SESSION_LOST_AFTER)
    row = Transceiver.objects.filter(
        transceiver_id=transceiver_id, state=NodeState.DOWN, state_changed_at__lte=now - lost_after
    ).only("state_reason").first()
    if row is None:
        return []
    failed = _fail_sessions(transceiver_id=transceiver_id,
                            reason=f"transceiver {transceiver_id} down: {row.state_reason}")
    if failed:
        logger.warning("transceiver %s down for %ss: failed %d live sessions", transceiver_id,
                       settings.HEALTH_SESSION_LOST_AFTER, len(failed))
    return failed


def transceiver_follow_incarnation(*, transceiver_id: int, incarnation: str) -> list[str]:
    """Record the daemon process a probe met; when it is a new one, fail the live sessions the
    previous process answered ("transceiver restarted"). Compare-and-set: idempotent."""
    row = Transceiver.objects.filter(transceiver_id=transceiver_id).only("incarnation").first()
    if row is None or row.incarnation == incarnation:
        return []
    previous = row.incarnation
    with transaction.atomic():
        moved = Transceiver.objects.filter(
            transceiver_id=transceiver_id, incarnation=previous
        ).update(incarnation=incarnation)
        if not moved or not previous:
            return []
        failed = _fail_sessions(transceiver_id=transceiver_id, reason=RESTARTED,
                                incarnation=previous)
    logger.warning("transceiver %s restarted (%s -> %s): failed %d live sessions",
                   transceiver_id, previous, incarnation, len(failed))
    return failed


def transceiver_reconcile(*, transceiver_id: int) -> tuple[list[str], list[str]]:
    """Make the DB and a live transceiver agree on its sessions; (failed, asked to close).

    DB-live sessions it does not hold (older than the grace) fail "lost by transceiver"; sessions
    it holds that the DB has ended are closed over the control channel. No fresh heartbeat: no
    change (the probes mark it down, which fails its sessions)."""
    held = transceiver_sessions_held(
        transceiver_id=transceiver_id, now=time.time(), max_age=settings.HEALTH_HEARTBEAT_MAX_AGE
    )
    if held is None:
        return [], []
    cutoff = timezone.now() - timedelta(seconds=settings.HEALTH_RECONCILE_GRACE)
    lost = sessions_live_ids(transceiver_id=transceiver_id, created_before=cutoff) - held
    failed = _fail_sessions(transceiver_id=transceiver_id, reason=LOST, session_ids=lost)
    stale = held - sessions_live_ids(transceiver_id=transceiver_id, among=_uuids(held))
    for session_id in sorted(stale):
        try:
            call_sync(request_close, transceiver_id=transceiver_id, session_id=session_id)
        except ControlError as exc:
            logger.warning("reconcile: close %s on transceiver %s: %s", session_id,
                           transceiver_id, exc)
    if failed or stale:
        logger.warning("reconcile transceiver %s: failed %d lost sessions, closed %d ended ones",
                       transceiver_id, len(failed), len(stale))
    return failed, sorted(stale)


def _uuids(ids: Iterable[str]) -> list[str]:
    """The ids that are UUIDs (a session id from Redis is not trusted to be one)."""
    valid = []
    for text in ids:
        try:
            valid.append(str(uuid.UUID(text)))
        except ValueError:
            continue
    return valid


def node_drain(*, kind: str, node_id: int, reason: str) -> bool:
    """Stop new sessions on a node and ask its daemon to drain; False if already draining.

    ``DoesNotExist`` for an unknown node. Placement stops as soon as the DB state changes.
    """
    row = _model(kind).objects.get(**{_id_field(kind): node_id})
    # the key first (the first reason stands): a probe that sees the DB state also sees the
    # request, so it cannot take the node out of draining before the daemon has heard of it
    shared_redis(settings.REDIS_URL).set(drain_key(kind, node_id), reason, nx=True)
    return row.state != NodeState.DRAINING and node_transition(
        kind=kind, node_id=node_id, from_state=row.state, to_state=NodeState.DRAINING,
        reason=reason,
    )


def node_resume(*, kind: str, node_id: int, reason: str) -> bool:
    """Cancel a drain: the daemon takes sessions again; the next probes confirm its health.

    The drain key goes whatever the stored state (a resume from anywhere clears it); True only
    when the node was ``draining``.
    """
    _model(kind).objects.get(**{_id_field(kind): node_id})
    shared_redis(settings.REDIS_URL).delete(drain_key(kind, node_id))
    return node_transition(
        kind=kind, node_id=node_id, from_state=NodeState.DRAINING, to_state=NodeState.UNKNOWN,
        reason=reason,
    )


def node_resume_after_drain(*, kind: str, node_id: int) -> bool:
    """A node's new process after a finished drain takes sessions again: the stored drain ends
    when its drain key is gone (the drained process deletes it as it exits). A drain still
    pending (key present) stands. True when the node was ``draining``."""
    if shared_redis(settings.REDIS_URL).exists(drain_key(kind, node_id)):
        return False
    return node_transition(kind=kind, node_id=node_id, from_state=NodeState.DRAINING,
                           to_state=NodeState.UNKNOWN, reason="restarted after its drain")


def rebalance(*, skew: float, ttl: float) -> dict[int, str]:
    """Hold skewed transceivers per region (no new sessions until they fall back); fail live
    sessions left on transceivers down for longer than the grace. Returns the holds."""
    held = rebalance_holds_get()
    live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
    rows = Transceiver.objects.annotate(live=live).only("transceiver_id", "region", "capacity",
                                                        "state")
    by_region: dict[int, dict[int, float]] = {}
    for row in rows:
        if row.state == NodeState.DOWN:  # the same grace as the probe: a pause keeps calls
            transceiver_fail_if_lost(transceiver_id=row.transceiver_id, now=timezone.now())
        elif row.state in (NodeState.HEALTHY, NodeState.FULL):
            loads = by_region.setdefault(row.region_id, {})
            loads[row.transceiver_id] = row.live / max(1, row.capacity)  # type: ignore[attr-defined]
    holds: dict[int, str] = {}
    for loads in by_region.values():
        holds.update(rebalance_holds(loads, held=held, skew=skew))
    redis_client = shared_redis(settings.REDIS_URL)
    if holds:
        redis_client.set(REBALANCE_HOLDS_KEY, json.dumps(holds), px=max(1, int(ttl * 1000)))
    else:
        redis_client.delete(REBALANCE_HOLDS_KEY)
    for node in holds.keys() - held.keys():
        logger.info("rebalance: hold transceiver %s (%s)", node, holds[node])
    return holds
