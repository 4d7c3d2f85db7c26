"""Writes on sessions: the offer use case (rate limit, steer, place, create, answer), then
answer, connect, end. Every state change is state-filtered."""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone
from psycopg import pq as psycopg_pq

from access.rules import Credential, Owner, check_offer, offer_region
from calls.errors import BadOffer, NoCapacity, RateLimited, Unavailable
from calls.models import LIVE_STATES, UNCONNECTED_STATES, Session, SessionState
from calls.placement import Placement, RegionCapacity, placement_decide
from calls.ratelimit import admit_offer, burst_for, client_key, take_token
from calls.sdp import validate_offer
from calls.selectors import (
    client_pending_sessions,
    pending_cap,
    pending_since,
    region_capacity,
)
from calls.steering import rank_regions_for
from geo.models import Region
from relays.ufrag import NONCE_BYTES, PASSWORD_BYTES, mint_password, mint_ufrag
from transceivers.control import ControlError, ControlTimeout, request_answer, request_close
from transceivers.models import Transceiver

logger = logging.getLogger(__name__)

UFRAG_ATTEMPTS = 5
PLACEMENT_ATTEMPTS = 2  # a transceiver that refuses or times out is skipped once
FILLED_RETRIES = 3  # transceivers found full under the row lock, skipped before giving up
RETRY_AFTER_SECONDS = 5
PENDING_WINDOW_MARGIN = 2.0  # s: a session is created just after its offer's token is spent
SWEEP_GRACE_SECONDS = 2.0  # the transceiver closes unconnected sessions first; the sweep backs up
UNAVAILABLE_RETRY_AFTER = 2
BACKING_ERRORS = (redis.RedisError, DatabaseError)  # Redis or the database did not answer
T = TypeVar("T")
BAD_OFFER_CODES = ("bad_sdp", "no_audio")  # transceiver refusals that are the offer's fault


@dataclass(frozen=True)
class OfferResult:
    """An answered offer: the session row, the SDP answer and its entity tag (RFC 9110 §8.8.3)."""

    session: Session
    answer: str
    etag: str


async def session_offer(
    *, sdp: str, client_ip: str | None, pinned: str | None, caller: Credential | None = None
) -> OfferResult:
    """Run one WHIP offer (RFC 9725 §4.2) end to end; raise a ``calls.errors`` error when refused
    (``access.rules.Denied`` when ``caller`` may not: no token with ``AUTH_REQUIRED``, an
    expired client secret, a region the key may not use).

    Each placement costs one worker-thread hop (rate limit, steer, place, create the row) and one
    control round trip; a transceiver that refuses or times out is skipped once.
    """
    check_offer(caller, required=settings.AUTH_REQUIRED, now=timezone.now())
    pinned = offer_region(caller, pinned)
    try:
        validate_offer(sdp)
    except ValueError as exc:
        raise BadOffer("bad_sdp", f"bad SDP offer: {exc}") from None
    refused: list[int] = []
    for attempt in range(PLACEMENT_ATTEMPTS):
        placed = await run_backed(
            _place, client_ip=client_ip, pinned=pinned, exclude=refused, first=attempt == 0,
            caller=caller,
        )
        if placed is None:
            break
        session, pwd = placed
        try:
            answer = await _answer(session, pwd, sdp)
        except BACKING_ERRORS as exc:
            raise _unavailable(exc) from None
        except ControlError as exc:
            if exc.code in BAD_OFFER_CODES:
                raise BadOffer(exc.code, f"bad SDP offer: {exc.detail}") from None
            logger.warning("transceiver %s refused: %s", session.transceiver, exc)
        except ControlTimeout:
            logger.warning("transceiver %s did not answer in time", session.transceiver)
        else:
            # ``answered`` is the transceiver's to record (its reporter writes it with the
            # process incarnation), so the answer goes out without another DB write
            return OfferResult(session, answer, session.etag)
        refused.append(session.transceiver.transceiver_id)
    raise NoCapacity("no healthy transceiver can take a session now",
                     retry_after=RETRY_AFTER_SECONDS)


def _unavailable(exc: Exception) -> Unavailable:
    logger.warning("backing service unavailable: %s: %s", type(exc).__name__, exc)
    return Unavailable("a backing service (Redis or the database) does not answer",
                       retry_after=UNAVAILABLE_RETRY_AFTER)


async def run_backed(step: Callable[..., T], **kwargs: Any) -> T:
    """Run a synchronous step in the worker thread; a Redis or database outage becomes
    ``Unavailable`` (503 with Retry-After) instead of an error page."""
    try:
        return await sync_to_async(step)(**kwargs)
    except BACKING_ERRORS as exc:
        raise _unavailable(exc) from None


def _place(
    *, client_ip: str | None, pinned: str | None, exclude: list[int], first: bool,
    caller: Credential | None = None,
) -> tuple[Session, str] | None:
    """One worker-thread hop: admit, steer, place and create the session row."""
    key = client_key(client_ip)
    if first:
        _admit(key)
        if caller is not None and caller.rate_limit_per_minute:
            _admit_key(caller.api_key_id, caller.api_key_name, caller.rate_limit_per_minute)
    owner = Owner(caller.api_key_id if caller else None,
                  caller.client_secret_id if caller else None)
    ranked = rank_regions_for(client_ip=client_ip, pinned=pinned)
    skipped = list(exclude)
    for _ in range(FILLED_RETRIES + 1):
        placement = placement_choose(ranked=ranked, exclude=skipped)
        if placement is None:
            return None
        created = session_create_within_capacity(
            placement=placement, client_ip=client_ip, client_key=key, owner=owner
        )
        if created is not None:
            return created
        skipped.append(placement.transceiver.transceiver_id)  # filled by another replica
    return None


def _admit_key(key_id: int, name: str, per_minute: int) -> None:
    """``RateLimited`` when API key ``key_id`` (with its client secrets) has no offer token
    left: the per-key limit, on the same Redis token bucket as the per-client one."""
    admission = take_token(key=f"apikey:{key_id}", per_minute=per_minute,
                           burst=burst_for(per_minute), window=1.0)
    if admission.wait > 0:
        raise RateLimited(f"too many offers for API key {name}",
                          retry_after=math.ceil(admission.wait))


def _admit(key: str) -> None:
    """``RateLimited`` when client ``key`` has no offer token left or too many sessions waiting
    to connect (RFC 6585 §4: 429 with Retry-After)."""
    window = settings.SESSION_CONNECT_TIMEOUT + PENDING_WINDOW_MARGIN
    admission = admit_offer(key=key, window=window)
    if admission.wait > 0:
        raise RateLimited("too many offers from this address",
                          retry_after=math.ceil(admission.wait))
    # Each pending session came from an offer within the window: with few such offers there can
    # be no more pending sessions than that, and the database is not asked.
    cap = settings.MAX_PENDING_PER_CLIENT
    if admission.recent > cap and client_pending_sessions(client_key=key) >= cap:
        raise RateLimited(
            f"{cap} sessions of this address have not connected yet",
            retry_after=math.ceil(settings.SESSION_CONNECT_TIMEOUT), code="too_many_pending",
        )


def placement_choose(
    *, ranked: list[tuple[Region, str]], exclude: Iterable[int] = ()
) -> Placement | None:
    """Read each ranked region's capacity (lazily, best first) and decide where to place."""

    def capacities() -> Iterator[tuple[RegionCapacity, str]]:
        for region, reason in ranked:
            yield region_capacity(region=region, exclude=exclude), reason

    return placement_decide(capacities())


async def _answer(session: Session, pwd: str, sdp: str) -> str:
    """Ask the session's transceiver for the answer; discard the row when none comes."""
    try:
        return await request_answer(
            transceiver_id=session.transceiver.transceiver_id,
            session_id=str(session.id),
            offer_sdp=sdp,
            ufrag=session.ufrag,
            pwd=pwd,
            relay_public=(session.relay.public_host, session.relay.public_port),
            relay_tcp_port=session.relay.tcp_port or 0,
            timeout=settings.CONTROL_TIMEOUT,
        )
    except BaseException:
        await sync_to_async(session_discard)(session_id=str(session.id))
        raise


def session_create_within_capacity(
    *, placement: Placement, client_ip: str | None, client_key: str = "",
    owner: Owner | None = None,
) -> tuple[Session, str] | None:
    """Create a NEW session with a freshly minted ufrag on the placement's transceiver and
    return it with its ICE password; None when that transceiver filled up since it was chosen.

    One transaction of two statements: the transceiver's row lock (PostgreSQL ``SELECT ... FOR
    UPDATE``; SQLite's IMMEDIATE transactions already serialize writers), then one insert that
    counts the live and pending sessions and writes the row only below both caps (``_caps``),
    so concurrent signaling replicas cannot overfill it. The count cannot join the lock's
    statement: under READ COMMITTED a statement sees what was committed when it began, and one
    that waited for the lock would miss the session its predecessor inserted. On PostgreSQL
    (outside an enclosing transaction) the four statements go in one round trip
    (``_create_pipelined``)."""
    for _ in range(UFRAG_ATTEMPTS):
        session = _new_session(placement, client_ip=client_ip, client_key=client_key,
                               owner=owner)
        try:
            if (connection.vendor == "postgresql" and not connection.in_atomic_block
                    and connection.get_autocommit()):
                inserted = _create_pipelined(session)
            else:
                inserted = _create_locked(session)
        except IntegrityError:  # ufrag collision (2^-32 per pair): mint another
            continue
        if not inserted:
            return None
        return session, mint_password(secrets.token_bytes(PASSWORD_BYTES))
    raise RuntimeError("could not mint a unique ufrag")


def _caps(session: Session) -> tuple[int, int]:
    """The live and pending caps of ``session``'s transceiver: its capacity as placement read
    it moments ago and ``pending_cap``'s rule (the one rule, as ``region_capacity`` applies it).
    A capacity changed in between applies from the next offer on; the row lock is what keeps
    concurrent creators from overfilling it, not a fresher read."""
    capacity = session.transceiver.capacity
    return capacity, pending_cap(capacity)


def _create_locked(session: Session) -> bool:
    """Lock the transceiver's row, insert below its caps (a transaction, or a savepoint in an
    enclosing one); True when the row was written (``DoesNotExist``: no such transceiver)."""
    live_cap, pending = _caps(session)
    with transaction.atomic():
        Transceiver.objects.select_for_update().values_list("pk").get(pk=session.transceiver_id)
        return session_insert_below_caps(session, live_cap=live_cap, pending_cap=pending)


def _create_pipelined(session: Session) -> bool:
    """PostgreSQL: ``BEGIN``, the row lock, the capped insert and ``COMMIT`` sent at once in
    psycopg's pipeline mode, one round trip where a transaction costs four. The server still
    runs them in order, and the insert's snapshot is taken when it starts, after the lock was
    granted: it sees the row a predecessor committed. The caps are the plain path's
    (``_caps``); the insert selects from the transceiver's row, so none is written when that row
    is gone. True when the row was written; ``IntegrityError`` on a ufrag collision (rolled
    back)."""
    meta, quote = Transceiver._meta, connection.ops.quote_name
    table, pk = quote(meta.db_table), quote(str(meta.pk.column))  # type: ignore[union-attr]
    live_cap, pending = _caps(session)
    sql, params = _insert_below_caps_sql(
        session, source=f" FROM {table}", guard=f"{table}.{pk} = %s AND ",
        guard_params=[session.transceiver_id], live_cap=live_cap, pending_cap=pending,
    )
    connection.ensure_connection()
    raw = connection.connection  # autocommit (no enclosing atomic): BEGIN / COMMIT are ours
    with connection.wrap_database_errors:
        try:
            with raw.pipeline():
                raw.cursor().execute("BEGIN")
                raw.cursor().execute(f"SELECT 1 FROM {table} WHERE {pk} = %s FOR UPDATE",
                                     [session.transceiver_id])
                insert = raw.cursor()
                insert.execute(sql, params)
                raw.cursor().execute("COMMIT")
        except BaseException:
            if raw.info.transaction_status != psycopg_pq.TransactionStatus.IDLE:
                raw.execute("ROLLBACK")  # the failed transaction our BEGIN opened
            raise
    return insert.rowcount == 1


def session_insert_below_caps(session: Session, *, live_cap: int, pending_cap: int) -> bool:
    """Insert ``session`` (unsaved) only while its transceiver holds fewer than ``live_cap``
    live and ``pending_cap`` unconnected sessions (``region_capacity``'s rule), in
    one ``INSERT ... SELECT ... WHERE`` statement; True when the row was written."""
    sql, params = _insert_below_caps_sql(session, live_cap=live_cap, pending_cap=pending_cap)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount == 1


def _insert_below_caps_sql(
    session: Session, *, live_cap: int, pending_cap: int, source: str = "", guard: str = "",
    guard_params: list[Any] | None = None,
) -> tuple[str, list[Any]]:
    """``INSERT ... SELECT <session's values> <source> WHERE <guard> live < <live_cap> AND
    pending < <pending_cap>`` and its parameters (``guard_params`` fill the guard's ``%s``).
    The ORM has no conditional insert, hence the SQL; the column values still go through each
    field."""
    meta = Session._meta
    values = [f.get_db_prep_save(f.pre_save(session, add=True), connection)
              for f in meta.concrete_fields]
    since = meta.get_field("created_at").get_db_prep_value(pending_since(), connection)
    live_states = [str(s) for s in LIVE_STATES]
    unconnected = [str(s) for s in UNCONNECTED_STATES]
    sql = _insert_below_caps_text(connection.vendor, source=source, guard=guard)
    params = [*values, *(guard_params or []), session.transceiver_id, *live_states,
              live_cap, session.transceiver_id, *unconnected, since, pending_cap]
    return sql, params


@functools.lru_cache(maxsize=16)
def _insert_below_caps_text(vendor: str, *, source: str, guard: str) -> str:
    """``_insert_below_caps_sql``'s statement, built once per database vendor and shape: its
    19 column types and names cost ~0.3 ms of Python per offer to spell out."""
    meta, ops = Session._meta, connection.ops
    fields = meta.concrete_fields
    # PostgreSQL types a bare parameter in a SELECT list as text (no assignment cast to uuid or
    # inet); SQLite's CAST would give a datetime numeric affinity, so it gets none.
    typed = vendor == "postgresql"
    select = ", ".join(f"CAST(%s AS {f.db_type(connection)})" if typed else "%s" for f in fields)
    table, column = ops.quote_name(meta.db_table), ops.quote_name
    named = {f.name: column(str(f.column)) for f in fields}  # concrete: every one has a column
    xcvr, state, created = named["transceiver"], named["state"], named["created_at"]
    return (
        f"INSERT INTO {table} ({', '.join(named.values())}) SELECT {select}{source} "
        f"WHERE {guard}(SELECT COUNT(*) FROM {table} WHERE {xcvr} = %s"
        f" AND {state} IN ({_placeholders([str(s) for s in LIVE_STATES])})) < %s"
        f" AND (SELECT COUNT(*) FROM {table} WHERE {xcvr} = %s"
        f" AND {state} IN ({_placeholders([str(s) for s in UNCONNECTED_STATES])})"
        f" AND {created} >= %s) < %s"
    )


def _placeholders(values: list[str]) -> str:
    """One ``%s`` per value, for an ``IN`` list that follows the state sets as they change."""
    return ", ".join(["%s"] * len(values))


def _new_session(
    placement: Placement, *, client_ip: str | None, client_key: str, owner: Owner | None
) -> Session:
    """An unsaved NEW session on ``placement`` with a freshly minted ufrag, validated."""
    key_id = settings.UFRAG_MINT_KEY_ID
    ufrag = mint_ufrag(
        shard=placement.relay.shard_id,
        transceiver=placement.transceiver.transceiver_id,
        key_id=key_id,
        key=settings.UFRAG_KEYRING[key_id],
        nonce=secrets.token_bytes(NONCE_BYTES),
    )
    session = Session(
        client_ip=client_ip,
        client_key=client_key,
        etag=secrets.token_hex(16),  # names this ICE session (RFC 9725 §4.3.1)
        region=placement.region,
        region_reason=placement.region_reason,
        relay=placement.relay,
        transceiver=placement.transceiver,
        ufrag=ufrag,
        api_key_id=owner.api_key_id if owner else None,
        client_secret_id=owner.client_secret_id if owner else None,
    )
    # The placement's rows were just read, and the DB's unique constraint on ufrag is the real
    # check (a collision retries), so skip the three FK and one unique-check queries.
    session.full_clean(exclude=["region", "relay", "transceiver", "api_key", "client_secret"],
                       validate_unique=False)
    return session


def session_discard(*, session_id: str) -> None:
    """Delete a session that never got an answer, so a failed offer leaves nothing behind."""
    Session.objects.filter(id=session_id, state=SessionState.NEW).delete()


def session_mark_answered(*, session_id: str, incarnation: str) -> None:
    """The transceiver process ``incarnation`` answered a live session: a ``new`` one becomes
    ``answered``; one that is further along (its ``connected`` came first) keeps its state."""
    was_new = Q(state=SessionState.NEW)
    Session.objects.filter(id=session_id, state__in=LIVE_STATES).update(
        state=Case(When(was_new, then=Value(SessionState.ANSWERED)), default=F("state")),
        answered_at=Case(When(was_new, then=Value(timezone.now())), default=F("answered_at")),
        transceiver_incarnation=incarnation[:32],
    )


def session_mark_connected(*, session_id: str) -> None:
    Session.objects.filter(
        id=session_id, state__in=(SessionState.NEW, SessionState.ANSWERED)
    ).update(state=SessionState.CONNECTED, connected_at=timezone.now())


def session_end(*, session_id: str, state: str, reason: str) -> bool:
    """End a live session (``ended`` or ``failed``); False when it had already ended."""
    if state not in (SessionState.ENDED, SessionState.FAILED):
        raise ValueError("bad end state")
    return bool(
        Session.objects.filter(id=session_id, state__in=LIVE_STATES).update(
            state=state, reason=reason[:200], ended_at=timezone.now()
        )
    )


async def session_hang_up(*, session: Session, reason: str) -> None:
    """End ``session`` for its caller (WHIP DELETE, RFC 9725 §4.3) and tell its transceiver."""
    sid = str(session.id)
    await sync_to_async(session_end)(session_id=sid, state=SessionState.ENDED, reason=reason)
    await request_close(transceiver_id=session.transceiver.transceiver_id, session_id=sid)


def sessions_fail(
    *, transceiver_id: int, reason: str, incarnation: str | None = None,
    session_ids: Iterable[str] | None = None,
) -> list[str]:
    """Fail live sessions of a transceiver: all, one process incarnation's, or the given ids.

    Returns the ids this call failed (each update is state-filtered: idempotent)."""
    rows = Session.objects.filter(transceiver__transceiver_id=transceiver_id,
                                  state__in=LIVE_STATES)
    if incarnation is not None:
        rows = rows.filter(transceiver_incarnation=incarnation)
    if session_ids is not None:
        rows = rows.filter(id__in=list(session_ids))
    failed = []
    for session_id in rows.values_list("id", flat=True):
        if Session.objects.filter(id=session_id, state__in=LIVE_STATES).update(
            state=SessionState.FAILED, reason=reason[:200], ended_at=timezone.now()
        ):
            failed.append(str(session_id))
    return failed


def sessions_fail_unconnected(*, older_than_seconds: float) -> int:
    """Fail sessions still not connected after the connect timeout (idempotent sweep)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return Session.objects.filter(
        state__in=(SessionState.NEW, SessionState.ANSWERED), created_at__lt=cutoff
    ).update(state=SessionState.FAILED, reason="connect timeout", ended_at=timezone.now())

