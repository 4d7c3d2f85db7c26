"""Reads for signaling: which relays and transceivers can take a session, and session state."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Field
from django.db.models.expressions import Col
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

_RELAY, _TRANSCEIVER = 0, 1  # ``_region_nodes_sql``'s row kinds
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


def _region_nodes_sql(*, excluded: int) -> str:
    """``_region_nodes_text`` for this connection's database."""
    return _region_nodes_text(connection.vendor, excluded)


@functools.lru_cache(maxsize=32)
def _region_nodes_text(vendor: str, excluded: int) -> str:
    """The statement ``_region_nodes`` runs, for ``excluded`` transceivers left out (built once
    per database vendor and count).

    One ``UNION ALL``: ``kind`` (``_RELAY`` or ``_TRANSCEIVER``), the relay shard's columns, the
    transceiver's columns, ``live``, ``pending``; a row fills its own kind's columns and NULLs
    the other's (a compound's column takes its type from the branch that has one). The counts
    are correlated ``COUNT(*)`` subqueries over an index (a transceiver's: ``(state,
    transceiver)``, live rows only; a relay's: PostgreSQL takes that index's ``state``, SQLite
    the relay foreign key's), never a join over every session a node ever had.

    Raw SQL rather than the ORM's ``union()`` of two annotated querysets: the same statement,
    but building and compiling that took ~3 ms of Python per offer, three times the query itself
    (PostgreSQL, issue 15 item 4). Names come from the models' metadata; the values (states,
    region, cut-off, exclusions) are parameters: ``_region_nodes_params``."""
    quote, meta = connection.ops.quote_name, Session._meta
    table = quote(meta.db_table)
    column = {f.name: quote(str(f.column)) for f in meta.concrete_fields}
    relay_table = quote(RelayShard._meta.db_table)
    xcvr_table = quote(Transceiver._meta.db_table)

    def count(node: str, outer: str, states: int, since: bool = False) -> str:
        target = str(meta.get_field(node).target_field.column)  # type: ignore[union-attr]
        recent = f" AND s.{column['created_at']} >= %s" if since else ""
        return (f"(SELECT COUNT(*) FROM {table} s WHERE s.{column[node]} = {outer}.{quote(target)}"
                f" AND s.{column['state']} IN ({_placeholders(states)}){recent})")

    def cols(alias: str, fields: list[Field[Any, Any]]) -> str:
        return ", ".join(f"{alias}.{quote(str(f.column))}" for f in fields)

    def nulls(fields: list[Field[Any, Any]]) -> str:
        return ", ".join(["NULL"] * len(fields))

    lives, unconnected = len(LIVE_STATES), len(UNCONNECTED_STATES)
    region_r = f"r.{quote(str(RelayShard._meta.get_field('region').column))}"
    region_t = f"t.{quote(str(Transceiver._meta.get_field('region').column))}"
    xcvr_id = quote(str(Transceiver._meta.get_field("transceiver_id").column))
    not_in = (f" AND t.{xcvr_id} NOT IN ({_placeholders(excluded)})"
              if excluded else "")
    return (
        f"SELECT {_RELAY}, {cols('r', _RELAY_FIELDS)}, {nulls(_XCVR_FIELDS)},"
        f" {count('relay', 'r', lives)}, 0 FROM {relay_table} r WHERE {region_r} = %s"
        f" UNION ALL"
        f" SELECT {_TRANSCEIVER}, {nulls(_RELAY_FIELDS)}, {cols('t', _XCVR_FIELDS)},"
        f" {count('transceiver', 't', lives)},"
        f" {count('transceiver', 't', unconnected, since=True)}"
        f" FROM {xcvr_table} t WHERE {region_t} = %s{not_in}"
    )


def _region_nodes_params(*, region: Region, exclude: list[int]) -> list[Any]:
    """``_region_nodes_sql``'s parameters, in its order."""
    created = Session._meta.get_field("created_at")
    since = created.get_db_prep_value(pending_since(), connection)
    live, unconnected = [str(s) for s in LIVE_STATES], [str(s) for s in UNCONNECTED_STATES]
    return [*live, region.pk, *live, *unconnected, since, region.pk, *exclude]


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def _converters(fields: list[Field[Any, Any]]) -> list[tuple[int, Col, list[Any]]]:
    """The ORM's DB-to-Python converters of ``fields`` (by position; only those that have any),
    so the rows read by hand come out as a queryset's would (SQLite's datetimes, say)."""
    found = []
    for i, field in enumerate(fields):
        col = field.get_col(field.model._meta.db_table)
        funcs = [*connection.ops.get_db_converters(col), *field.get_db_converters(connection)]
        if funcs:
            found.append((i, col, funcs))
    return found


def _converted(values: tuple[Any, ...] | list[Any],
               converters: list[tuple[int, Col, list[Any]]]) -> list[Any]:
    row = list(values)
    for i, col, funcs in converters:
        for func in funcs:
            row[i] = func(row[i], col, connection)
    return row


def _region_nodes(
    *, region: Region, exclude: Iterable[int]
) -> tuple[list[RelayShard], list[tuple[Transceiver, int, int]]]:
    """``region``'s relay shards (``live`` annotated) by shard id, and its transceivers but
    ``exclude`` with their live and pending counts by transceiver id: one statement
    (``_region_nodes_sql``), one round trip."""
    excluded = list(exclude)
    with connection.cursor() as cursor:
        cursor.execute(_region_nodes_sql(excluded=len(excluded)),
                       _region_nodes_params(region=region, exclude=excluded))
        rows = cursor.fetchall()
    relays: list[RelayShard] = []
    transceivers: list[tuple[Transceiver, int, int]] = []
    db, r_end = connection.alias, 1 + len(_RELAY_FIELDS)
    r_conv, x_conv = _converters(_RELAY_FIELDS), _converters(_XCVR_FIELDS)
    for row in rows:
        live, pending = int(row[-2]), int(row[-1])
        if row[0] == _RELAY:
            relay = RelayShard.from_db(db, _RELAY_NAMES, _converted(row[1:r_end], r_conv))
            relay.live = live  # type: ignore[attr-defined]  # as ``annotate`` would set it
            relays.append(relay)
        else:
            xcvr = Transceiver.from_db(db, _XCVR_NAMES, _converted(row[r_end:-2], x_conv))
            transceivers.append((xcvr, live, pending))
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
