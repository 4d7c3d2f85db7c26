"""Reads for signaling: which relays and transceivers can take a session, and session state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Field, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from calls.models import LIVE_STATES, UNCONNECTED_STATES, Session
from calls.placement import RegionCapacity, TransceiverLoad
from fleet.heartbeats import RelayHeartbeat
from fleet.keys import REBALANCE_HOLDS_KEY
from fleet.nodes import ALLOCATABLE_STATES
from geo.models import Region
from relays.models import RelayShard
from relays.selectors import fleet_read, heartbeat_fresh
from transceivers.models import Transceiver

_RELAY, _TRANSCEIVER = 0, 1  # ``_region_nodes_query``'s row kinds
_RELAY_FIELDS: list[Field[Any, Any]] = list(RelayShard._meta.concrete_fields)
_XCVR_FIELDS: list[Field[Any, Any]] = list(Transceiver._meta.concrete_fields)
_RELAY_NAMES = [f.attname for f in _RELAY_FIELDS]
_XCVR_NAMES = [f.attname for f in _XCVR_FIELDS]


def _relay_serving(beats: list[RelayHeartbeat], now: float) -> bool:
    fresh = any(heartbeat_fresh(b.sent_at, now) for b in beats)
    return fresh and not any(b.draining for b in beats)


def relays_live(
    *, relays: Iterable[RelayShard], beats: dict[int, list[RelayHeartbeat]], now: float
) -> list[RelayShard]:
    """Relay shards that may carry new sessions: a fresh worker heartbeat in ``beats``, not
    draining, and a stored health state that allows it (not down, suspect or draining)."""
    return [relay for relay in relays if relay.state in ALLOCATABLE_STATES
            and _relay_serving(beats.get(relay.shard_id, []), now)]


def _holds(raw: bytes | str | None) -> dict[int, str]:
    """The rebalancer's holds from the raw value of ``REBALANCE_HOLDS_KEY`` (None: expired)."""
    return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}


def pending_since() -> datetime:
    """Sessions created after this and not connected yet still wait for ICE (connect timeout)."""
    return timezone.now() - timedelta(seconds=settings.SESSION_CONNECT_TIMEOUT)


def pending_cap(capacity: int) -> int:
    """How many unconnected sessions a transceiver of ``capacity`` may hold (at least one)."""
    return max(1, int(capacity * settings.TRANSCEIVER_PENDING_SHARE))


def client_pending_sessions(*, client_key: str) -> int:
    """How many of client ``client_key``'s sessions wait to connect."""
    return Session.objects.filter(
        client_key=client_key, state__in=UNCONNECTED_STATES, created_at__gte=pending_since()
    ).count()


def _sessions_of(node: str, **where: object) -> Coalesce:
    """How many sessions matching ``where`` the outer row (a relay or transceiver, by the
    Session foreign key ``node``) holds: a correlated count that reads only live rows through
    the ``(state, transceiver)`` index, where a join would read every session the node ever had
    (ended ones pile up)."""
    rows = (Session.objects.filter(**{node: OuterRef("pk")}, **where).order_by()
            .values(node).annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(rows), 0)


def _region_nodes_query(*, region: Region, exclude: Iterable[int]) -> QuerySet[Any, Any]:
    """One ``UNION ALL`` over ``region``'s relay shards (with their live count) and transceivers
    (with their live and pending counts), so the capacity read is one round trip.

    Each row is ``kind`` (``_RELAY`` or ``_TRANSCEIVER``), the relay shard's columns, the
    transceiver's columns, ``live``, ``pending``: a row fills its own kind's columns and carries
    typed NULLs in the other's (typed so that each column keeps its field's converters; the
    compound's column types are the branches' common ones, NULL takes the other's). Both counts
    stay correlated subqueries over the ``(state, transceiver)`` index (``_sessions_of``), never a
    join over the sessions a node ever had."""
    since = pending_since()

    def nulls(fields: list[Field[Any, Any]], prefix: str) -> dict[str, Value]:
        return {f"{prefix}_{f.attname}": Value(None, output_field=f) for f in fields}

    relay_nulls, xcvr_nulls = nulls(_XCVR_FIELDS, "x"), nulls(_RELAY_FIELDS, "r")
    relays = (
        RelayShard.objects.filter(region=region).order_by()
        .annotate(kind=Value(_RELAY), live=_sessions_of("relay", state__in=LIVE_STATES),
                  pending=Value(0), **relay_nulls)
        .values_list("kind", *(f.attname for f in _RELAY_FIELDS), *relay_nulls,
                     "live", "pending")
    )
    transceivers = (
        Transceiver.objects.filter(region=region).exclude(transceiver_id__in=list(exclude))
        .order_by()
        .annotate(kind=Value(_TRANSCEIVER), live=_sessions_of("transceiver", state__in=LIVE_STATES),
                  pending=_sessions_of("transceiver", state__in=UNCONNECTED_STATES,
                                       created_at__gte=since), **xcvr_nulls)
        .values_list("kind", *xcvr_nulls, *(f.attname for f in _XCVR_FIELDS), "live", "pending")
    )
    return relays.union(transceivers, all=True)


def _region_nodes(
    *, region: Region, exclude: Iterable[int]
) -> tuple[list[RelayShard], list[tuple[Transceiver, int, int]]]:
    """``region``'s relay shards (``live`` annotated) by shard id, and its transceivers but
    ``exclude`` with their live and pending counts by transceiver id, from one statement."""
    relays: list[RelayShard] = []
    transceivers: list[tuple[Transceiver, int, int]] = []
    query = _region_nodes_query(region=region, exclude=exclude)
    db, r_names, x_names = query.db, _RELAY_NAMES, _XCVR_NAMES
    r_end = 1 + len(r_names)
    for row in query:
        live, pending = row[-2], row[-1]
        if row[0] == _RELAY:
            relay = RelayShard.from_db(db, r_names, row[1:r_end])
            relay.live = live  # type: ignore[attr-defined]  # as ``annotate`` would set it
            relays.append(relay)
        else:
            transceivers.append(
                (Transceiver.from_db(db, x_names, row[r_end:-2]), int(live), int(pending)))
    relays.sort(key=lambda r: r.shard_id)  # the models' orderings (a compound has none)
    transceivers.sort(key=lambda t: t[0].transceiver_id)
    return relays, transceivers


def region_capacity(*, region: Region, exclude: Iterable[int] = ()) -> RegionCapacity:
    """What ``region`` can offer right now: its relays and transceivers with their live sessions
    in one DB round trip (``_region_nodes``), then the heartbeats of its relays and transceivers
    and the rebalancer's holds in one Redis round trip."""
    all_relays, rows = _region_nodes(region=region, exclude=exclude)
    fleet = fleet_read(
        shards=[r.shard_id for r in all_relays if r.state in ALLOCATABLE_STATES],
        transceivers=[t.transceiver_id for t, _, _ in rows], also=[REBALANCE_HOLDS_KEY],
    )
    now, holds = time.time(), _holds(fleet.others[0])
    relays = relays_live(relays=all_relays, beats=fleet.relays, now=now)
    loads = tuple(
        TransceiverLoad(
            t, live, beat if beat is not None and heartbeat_fresh(beat.sent_at, now) else None,
            holds.get(t.transceiver_id, ""), pending, pending_cap(t.capacity),
        )
        for t, live, pending in rows
        for beat in [fleet.transceivers.get(t.transceiver_id)]
    )
    return RegionCapacity(region, tuple(relays), loads, tuple(all_relays))


def session_get(*, session_id: str) -> Session | None:
    return (
        Session.objects.select_related("region", "relay", "transceiver")
        .filter(id=session_id)
        .first()
    )


def session_state_counts() -> dict[str, int]:
    """Sessions per state, in one ``GROUP BY`` (the metrics scrape)."""
    rows = Session.objects.order_by().values_list("state").annotate(n=Count("id"))
    return {state: n for state, n in rows}
