"""Reads for signaling: which relays and transceivers can take a session, and session state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Q

from calls.models import LIVE_STATES, Session
from geo.models import Region
from relays.models import ALLOCATABLE_STATES, NodeState, RelayShard
from relays.registry import REBALANCE_HOLDS_KEY, RelayHeartbeat, TransceiverHeartbeat
from relays.selectors import relay_heartbeats, transceiver_heartbeats
from signaling_site.redis_client import get_redis
from transceivers.models import Transceiver


def _fresh(sent_at: float, now: float) -> bool:
    """A heartbeat recent enough to offer the node: the guard that needs no probe."""
    return now - sent_at <= settings.HEALTH_HEARTBEAT_MAX_AGE


@dataclass(frozen=True)
class TransceiverLoad:
    transceiver: Transceiver
    live_sessions: int
    heartbeat: TransceiverHeartbeat | None  # None when missing or stale
    held: str = ""  # why the rebalancer gives it no new sessions now ("" = not held)

    @property
    def up(self) -> bool:
        """Alive and serving: a fresh heartbeat, not marked down, suspect or draining."""
        hb = self.heartbeat
        return hb is not None and not hb.draining and self.transceiver.state in (
            *ALLOCATABLE_STATES, NodeState.FULL
        )

    @property
    def available(self) -> bool:
        """May take a new session: up, not full (stored state and live count), not held."""
        return (
            self.up and self.transceiver.state != NodeState.FULL
            and self.live_sessions < self.transceiver.capacity
        )

    @property
    def load(self) -> float:
        return self.live_sessions / max(1, self.transceiver.capacity)


@dataclass(frozen=True)
class RegionCapacity:
    """A region's live relays and the transceivers that can take a session, least loaded first."""

    region: Region
    relays: tuple[RelayShard, ...]  # live ones
    transceivers: tuple[TransceiverLoad, ...]  # all of the region's
    all_relays: tuple[RelayShard, ...] = ()  # every shard of the region, live or not

    @property
    def available(self) -> tuple[TransceiverLoad, ...]:
        """Transceivers that can take a session now, least loaded first; ones held by the
        rebalancer only when nothing else can (a hold never refuses a caller)."""
        ready = sorted((t for t in self.transceivers if t.available), key=lambda t: t.load)
        return tuple(t for t in ready if not t.held) or tuple(ready)

    @property
    def usable(self) -> bool:
        return self.region.enabled and bool(self.relays) and bool(self.available)

    @property
    def load(self) -> float:
        live = [t for t in self.transceivers if t.heartbeat is not None]
        if not live:
            return 1.0
        capacity = sum(t.transceiver.capacity for t in live)
        return min(1.0, sum(t.live_sessions for t in live) / max(1, capacity))

    @property
    def status(self) -> str:
        """``ok`` or why the region cannot take a session: disabled, no_relay, full (every
        transceiver that is up is at capacity), no_transceiver (none up)."""
        if not self.region.enabled:
            return "disabled"
        if not self.relays:
            return "no_relay"
        if self.available:
            return "ok"
        return "full" if any(t.up for t in self.transceivers) else "no_transceiver"


def _relay_serving(beats: list[RelayHeartbeat], now: float) -> bool:
    return any(_fresh(b.sent_at, now) for b in beats) and not any(b.draining for b in beats)


def relays_live(*, relays: Iterable[RelayShard]) -> list[RelayShard]:
    """Relay shards that may carry new sessions: a fresh worker heartbeat, not draining, and a
    stored health state that allows it (not down, suspect or draining)."""
    relays = [r for r in relays if r.state in ALLOCATABLE_STATES]
    if not relays:
        return []
    beats = relay_heartbeats(shards=[r.shard_id for r in relays])
    now = time.time()
    return [relay for relay in relays if _relay_serving(beats.get(relay.shard_id, []), now)]


def _holds() -> dict[int, str]:
    raw = get_redis().get(REBALANCE_HOLDS_KEY)
    return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def region_capacity(*, region: Region, exclude: Iterable[int] = ()) -> RegionCapacity:
    """What ``region`` can offer right now (heartbeats in Redis, live sessions in the DB)."""
    live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
    all_relays = list(RelayShard.objects.filter(region=region).annotate(live=live))
    relays = relays_live(relays=all_relays)
    rows = list(
        Transceiver.objects.filter(region=region)
        .exclude(transceiver_id__in=list(exclude))
        .annotate(live=live)
    )
    beats = transceiver_heartbeats(ids=[t.transceiver_id for t in rows])
    now, holds = time.time(), _holds()
    loads = tuple(
        TransceiverLoad(
            t, t.live, beat if beat is not None and _fresh(beat.sent_at, now) else None,
            holds.get(t.transceiver_id, ""),
        )
        for t in rows
        for beat in [beats.get(t.transceiver_id)]
    )
    return RegionCapacity(region, tuple(relays), loads, tuple(all_relays))


def session_get(*, session_id: str) -> Session | None:
    return (
        Session.objects.select_related("region", "relay", "transceiver")
        .filter(id=session_id)
        .first()
    )


@dataclass(frozen=True)
class Placement:
    region: Region
    region_reason: str  # nearest | pinned | default | fallback:<why the better region could not>
    relay: RelayShard
    transceiver: Transceiver


def placement_choose(
    *, ranked: list[tuple[Region, str]], exclude: Iterable[int] = ()
) -> Placement | None:
    """First usable region of ``ranked`` (region, reason); its least-loaded relay and transceiver.

    ``exclude`` names transceivers that just refused or timed out.
    When an earlier region cannot serve, the reason becomes ``fallback:<code>-<why>``.
    """
    skipped: list[str] = []
    for region, reason in ranked:
        capacity = region_capacity(region=region, exclude=exclude)
        if not capacity.usable:
            skipped.append(f"{region.code}-{capacity.status}")
            continue
        relay = min(capacity.relays, key=lambda r: (getattr(r, "live", 0), r.shard_id))
        why = f"fallback:{skipped[0]}" if skipped else reason
        return Placement(region, why, relay, capacity.available[0].transceiver)
    return None
