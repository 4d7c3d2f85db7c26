"""Writes on sessions: create, answer, connect, end. Every state change is state-filtered."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from calls.models import LIVE_STATES, Session, SessionState
from calls.selectors import Placement
from relays.ufrag import mint_password, mint_ufrag

UFRAG_ATTEMPTS = 5


def session_create(*, placement: Placement, client_ip: str | None) -> tuple[Session, str]:
    """Create a NEW session with a freshly minted ufrag; return it and its ICE password."""
    key_id = settings.UFRAG_MINT_KEY_ID
    for _ in range(UFRAG_ATTEMPTS):
        ufrag = mint_ufrag(
            shard=placement.relay.shard_id,
            transceiver=placement.transceiver.transceiver_id,
            key_id=key_id,
            key=settings.UFRAG_KEYRING[key_id],
            nonce=secrets.token_bytes(4),
        )
        session = Session(
            client_ip=client_ip,
            region=placement.region,
            region_reason=placement.region_reason,
            relay=placement.relay,
            transceiver=placement.transceiver,
            ufrag=ufrag,
        )
        # The placement's rows were just read, and the DB's unique constraint on ufrag is the
        # real check (a collision retries), so skip the three FK and one unique-check queries.
        session.full_clean(exclude=["region", "relay", "transceiver"], validate_unique=False)
        try:
            with transaction.atomic():
                session.save(force_insert=True)
        except IntegrityError:  # ufrag collision (2^-32 per pair): mint another
            continue
        return session, mint_password(secrets.token_bytes(18))
    raise RuntimeError("could not mint a unique ufrag")


def session_discard(*, session_id: str) -> None:
    """Delete a session that never got an answer, so a failed offer leaves nothing behind."""
    Session.objects.filter(id=session_id, state=SessionState.NEW).delete()


def session_mark_answered(*, session_id: str, etag: str) -> None:
    Session.objects.filter(id=session_id, state=SessionState.NEW).update(
        state=SessionState.ANSWERED, etag=etag, answered_at=timezone.now()
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


def sessions_fail_unconnected(*, older_than_seconds: float) -> int:
    """Fail sessions still not connected after the connect timeout (idempotent sweep)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return Session.objects.filter(
        state__in=(SessionState.NEW, SessionState.ANSWERED), created_at__lt=cutoff
    ).update(state=SessionState.FAILED, reason="connect timeout", ended_at=timezone.now())


def sessions_fail_on_transceiver(*, transceiver_id: int, reason: str) -> int:
    """Fail every live session of a transceiver that went down (idempotent update)."""
    return Session.objects.filter(
        transceiver__transceiver_id=transceiver_id, state__in=LIVE_STATES
    ).update(state=SessionState.FAILED, reason=reason[:200], ended_at=timezone.now())
