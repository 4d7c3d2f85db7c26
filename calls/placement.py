"""Where a session goes: the pure placement decision over regions' capacities (no DB, no I/O).

The selectors read what each region can offer (``calls.selectors.region_capacity``); this module
decides: the first usable region in steering order, its least-loaded relay and transceiver, and
the reason (``nearest | pinned | default | fallback:<code>-<why>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.heartbeats import TransceiverHeartbeat
from fleet.nodes import ALLOCATABLE_STATES, NodeState

if TYPE_CHECKING:  # rows are only carried here, never queried
    from geo.models import Region
    from relays.models import RelayShard
    from transceivers.models import Transceiver


@dataclass(frozen=True)
class TransceiverLoad:
    transceiver: Transceiver
    live_sessions: int
    heartbeat: TransceiverHeartbeat | None  # None when missing or stale
    held: str = ""  # why the rebalancer gives it no new sessions now ("" = not held)
    pending: int = 0  # sessions offered recently and not connected yet
    # At most this many may wait to connect (None: no cap), so that offers which never connect
    # (a flood) cannot fill a transceiver; the selector sets a share of the capacity.
    pending_cap: int | None = None

    @property
    def up(self) -> bool:
        """Alive and serving: a fresh heartbeat, not marked down, suspect or draining."""
        hb = self.heartbeat
        return hb is not None and not hb.draining and self.transceiver.state in (
            *ALLOCATABLE_STATES, NodeState.FULL
        )

    @property
    def available(self) -> bool:
        """May take a new session: up, not full (stored state and live count), fewer than
        ``pending_cap`` unconnected sessions."""
        return (
            self.up and self.transceiver.state != NodeState.FULL
            and self.live_sessions < self.transceiver.capacity
            and (self.pending_cap is None or self.pending < self.pending_cap)
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


@dataclass(frozen=True)
class Placement:
    region: Region
    region_reason: str  # nearest | pinned | default | fallback:<why the better region could not>
    relay: RelayShard
    transceiver: Transceiver


def relay_live_sessions(relay: RelayShard) -> int:
    """The live-session count the capacity query annotated on the shard (0 when absent)."""
    return int(getattr(relay, "live", 0))


def placement_decide(ranked: Iterable[tuple[RegionCapacity, str]]) -> Placement | None:
    """First usable region of ``ranked`` (capacity, steering reason), its least-loaded relay
    and transceiver; an earlier unusable region turns the reason into
    ``fallback:<code>-<status>``. ``ranked`` is consumed lazily: later regions are only read
    when the earlier ones cannot serve."""
    skipped: list[str] = []
    for capacity, reason in ranked:
        if not capacity.usable:
            skipped.append(f"{capacity.region.code}-{capacity.status}")
            continue
        relay = min(capacity.relays, key=lambda r: (relay_live_sessions(r), r.shard_id))
        why = f"fallback:{skipped[0]}" if skipped else reason
        return Placement(capacity.region, why, relay, capacity.available[0].transceiver)
    return None
