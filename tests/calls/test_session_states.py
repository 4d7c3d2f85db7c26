"""The session row's state as the transceiver's reports arrive, in either order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from calls import services
from calls.models import Session, SessionState
from calls.placement import Placement
from tests.dashboard.fleet import make_nodes, make_region, make_session


def _session(state: str) -> Session:
    relay, xcvr = make_nodes(make_region("eu-west", default=True), 1)
    return make_session(relay, xcvr, state=state)


@pytest.mark.django_db
def test_answered_moves_a_new_session_and_names_its_process() -> None:
    session = _session(SessionState.NEW)
    services.session_mark_answered(session_id=str(session.id), incarnation="a" * 40)
    session.refresh_from_db()
    assert session.state == SessionState.ANSWERED and session.answered_at is not None
    assert session.transceiver_incarnation == "a" * 32


@pytest.mark.django_db
def test_a_late_answered_keeps_connected_but_still_names_the_process() -> None:
    session = _session(SessionState.NEW)
    services.session_mark_connected(session_id=str(session.id))
    services.session_mark_answered(session_id=str(session.id), incarnation="b" * 16)
    session.refresh_from_db()
    assert session.state == SessionState.CONNECTED and session.answered_at is None
    assert session.transceiver_incarnation == "b" * 16


@pytest.mark.django_db
def test_answered_leaves_an_ended_session_alone() -> None:
    session = _session(SessionState.NEW)
    services.session_end(session_id=str(session.id), state=SessionState.ENDED, reason="bye")
    services.session_mark_answered(session_id=str(session.id), incarnation="c" * 16)
    session.refresh_from_db()
    assert session.state == SessionState.ENDED and session.transceiver_incarnation == ""


# Inside a test transaction the create takes a savepoint; outside one (as signaling runs it) on
# PostgreSQL it sends lock and insert in one pipeline: both must count alike.
IN_OR_OUTSIDE_A_TRANSACTION = [
    pytest.param(marks=pytest.mark.django_db, id="in-a-transaction"),
    pytest.param(marks=pytest.mark.django_db(transaction=True), id="outside-a-transaction"),
]


@pytest.mark.parametrize("", IN_OR_OUTSIDE_A_TRANSACTION)
def test_create_within_capacity_counts_live_and_recent_unconnected_sessions(
    settings: Any,
) -> None:
    """The one-statement insert refuses at the live cap and at the pending cap; ended sessions
    and unconnected ones older than the connect timeout do not count."""
    settings.TRANSCEIVER_PENDING_SHARE = 0.5
    region = make_region("eu-west", default=True)
    relay, xcvr = make_nodes(region, 1)
    xcvr.capacity = 4
    xcvr.save()
    placement = Placement(region, "nearest", relay, xcvr)

    def create() -> Session | None:
        created = services.session_create_within_capacity(placement=placement, client_ip=None)
        return created[0] if created else None

    first, second = create(), create()
    assert first is not None and second is not None
    assert first.state == SessionState.NEW and Session.objects.get(id=first.id).ufrag
    assert create() is None  # pending cap: 2 of 4 may wait to connect
    old = timezone.now() - timedelta(seconds=settings.SESSION_CONNECT_TIMEOUT + 1)
    Session.objects.filter(id=first.id).update(created_at=old)  # no longer pending, still live
    third = create()
    assert third is not None
    services.session_mark_connected(session_id=str(third.id))
    fourth = create()  # pending: second and this one
    assert fourth is not None
    services.session_mark_connected(session_id=str(fourth.id))
    assert create() is None  # live cap: 4 live, 1 pending
    services.session_end(session_id=str(second.id), state=SessionState.ENDED, reason="bye")
    assert create() is not None  # an ended session frees its place


@pytest.mark.parametrize("", IN_OR_OUTSIDE_A_TRANSACTION)
def test_a_ufrag_collision_retries_with_another_and_leaves_the_connection_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database's unique ufrag refuses a repeat: the create rolls back, mints another and
    succeeds, and the connection takes the next query (no transaction left aborted)."""
    region = make_region("eu-west", default=True)
    relay, xcvr = make_nodes(region, 1)
    placement = Placement(region, "nearest", relay, xcvr)
    minted = iter(["collide1", "collide1", "distinct"])
    monkeypatch.setattr(services, "mint_ufrag", lambda **_: next(minted))
    first = services.session_create_within_capacity(placement=placement, client_ip=None)
    second = services.session_create_within_capacity(placement=placement, client_ip=None)
    assert first is not None and second is not None
    assert (first[0].ufrag, second[0].ufrag) == ("collide1", "distinct")
    assert sorted(Session.objects.values_list("ufrag", flat=True)) == ["collide1", "distinct"]
