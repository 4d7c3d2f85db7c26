"""Reads for signaling: which relays and transceivers can take a session, and session state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Q

from calls.models import LIVE_STATES, Session
from geo.models import Region
from relays.models import RelayShard
from relays.registry import TransceiverHeartbeat, relay_heartbeat_key, transceiver_heartbeat_key
from signaling_site.redis_client import get_redis
from transceivers.models import Transceiver

MAX_RELAY_WORKERS = 16  # heartbeat keys looked at per shard


@dataclass(frozen=True)
class TransceiverLoad:
    transceiver: Transceiver
    live_sessions: int
    heartbeat: TransceiverHeartbeat | None

    @property
    def available(self) -> bool:
        hb = self.heartbeat
        return hb is not None and not hb.draining and self.live_sessions < self.transceiver.capacity

    @property
    def load(self) -> float:
        return self.live_sessions / max(1, self.transceiver.capacity)


@dataclass(frozen=True)
class RegionCapacity:
    """A region's live relays and the transceivers that can take a session, least loaded first."""

    region: Region
    relays: tuple[RelayShard, ...]  # live ones
    transceivers: tuple[TransceiverLoad, ...]  # all of the region's

    @property
    def available(self) -> tuple[TransceiverLoad, ...]:
        """Transceivers that can take a session now, least loaded first."""
        return tuple(sorted((t for t in self.transceivers if t.available), key=lambda t: t.load))

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
        """``ok`` or why the region cannot take a session: disabled, no_relay, no_transceiver."""
        if not self.region.enabled:
            return "disabled"
        if not self.relays:
            return "no_relay"
        return "no_transceiver" if not self.available else "ok"


def relays_live(*, relays: Iterable[RelayShard]) -> list[RelayShard]:
    """Relay shards with at least one fresh worker heartbeat."""
    relays = list(relays)
    if not relays:
        return []
    keys = [relay_heartbeat_key(r.shard_id, w) for r in relays for w in range(MAX_RELAY_WORKERS)]
    values = get_redis().mget(keys)
    return [
        relay
        for index, relay in enumerate(relays)
        if any(values[index * MAX_RELAY_WORKERS : (index + 1) * MAX_RELAY_WORKERS])
    ]


def transceiver_heartbeats(*, ids: list[int]) -> dict[int, TransceiverHeartbeat]:
    if not ids:
        return {}
    values = get_redis().mget([transceiver_heartbeat_key(i) for i in ids])
    return {i: TransceiverHeartbeat.from_json(v) for i, v in zip(ids, values, strict=True) if v}


def region_capacity(*, region: Region, exclude: Iterable[int] = ()) -> RegionCapacity:
    """What ``region`` can offer right now (heartbeats in Redis, live sessions in the DB)."""
    live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
    relays = relays_live(relays=RelayShard.objects.filter(region=region).annotate(live=live))
    rows = list(
        Transceiver.objects.filter(region=region)
        .exclude(transceiver_id__in=list(exclude))
        .annotate(live=live)
    )
    beats = transceiver_heartbeats(ids=[t.transceiver_id for t in rows])
    loads = tuple(TransceiverLoad(t, t.live, beats.get(t.transceiver_id)) for t in rows)
    return RegionCapacity(region, tuple(relays), loads)


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
