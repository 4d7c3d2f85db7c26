"""WHIP PATCH (RFC 9725 §4.3): trickle ICE fragments accepted (204) under If-Match rules; ICE
restart refused (422); bad fragments 400; never a 5xx."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from calls.models import Session, SessionState
from calls.views import if_match_status, parse_trickle_fragment
from tests.dashboard.fleet import make_nodes, make_region, make_session

TRICKLE = "application/trickle-ice-sdpfrag"
ETAG = "0123456789abcdef0123456789abcdef"
FRAGMENT = (
    "a=ice-ufrag:EsAw\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:0\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
    "a=end-of-candidates\r\n"
)


# the pure checks -------------------------------------------------------------------------------

def test_fragment_parses_candidates_and_end() -> None:
    fragment = parse_trickle_fragment(FRAGMENT)
    assert fragment.candidates == ("1387637174 1 udp 2122260223 192.0.2.1 61764 typ host "
                                   "generation 0",)
    assert fragment.end_of_candidates


def test_end_of_candidates_alone_is_a_fragment() -> None:
    assert parse_trickle_fragment("a=end-of-candidates\r\n").candidates == ()


@pytest.mark.parametrize(("body", "reason"), [
    ("hello", "malformed sdpfrag line"),
    ("v=0\r\n", "malformed sdpfrag line"),
    ("m=audio\r\n", "malformed m-line"),
    ("a=candidate:1 1 udp 2122260223 192.0.2.1 61764 host\r\n", "malformed candidate"),
    ("a=candidate:1 x udp 2122260223 192.0.2.1 61764 typ host\r\n", "malformed candidate"),
    ("a=candidate:1 1 udp 2122260223 192.0.2.1 99999 typ host\r\n", "malformed candidate"),
    ("a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ bogus\r\n", "malformed candidate"),
    ("a=ice-ufrag:no spaces\r\n", "malformed ice-ufrag"),
])
def test_malformed_fragments(body: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_trickle_fragment(body)


@pytest.mark.parametrize(("header", "status"), [
    (None, 428), ("", 428), ("*", 422), (f'"{ETAG}"', None), (f'"other", "{ETAG}"', None),
    ('"other"', 412), (f'W/"{ETAG}"', 412), (ETAG, 412),
])
def test_if_match_rules(header: str | None, status: int | None) -> None:
    assert if_match_status(header, ETAG) == status


def test_a_session_without_etag_matches_nothing() -> None:
    assert if_match_status('""', "") == 412


# the endpoint ----------------------------------------------------------------------------------

@pytest.fixture
def session(db: None) -> Session:
    relay, xcvr = make_nodes(make_region("eu-west", default=True), 1)
    session = make_session(relay, xcvr, state=SessionState.ANSWERED)
    Session.objects.filter(id=session.id).update(etag=ETAG)
    return session


def _patch(client: Client, session: Session, body: bytes | str, **headers: str) -> object:
    return client.patch(f"/v1/sessions/{session.id}", data=body,
                        content_type=headers.pop("content_type", TRICKLE), headers=headers)


def _problem(response: object, status: int, code: str) -> None:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    assert json.loads(response.content)["code"] == code  # type: ignore[attr-defined]


def test_trickle_with_the_etag_is_204(client: Client, session: Session) -> None:
    response = _patch(client, session, FRAGMENT, If_Match=f'"{ETAG}"')
    assert response.status_code == 204, response.content  # type: ignore[attr-defined]
    assert response["ETag"] == f'"{ETAG}"'  # type: ignore[index]


def test_trickle_without_if_match_is_428(client: Client, session: Session) -> None:
    _problem(_patch(client, session, FRAGMENT), 428, "precondition_required")


def test_trickle_with_a_stale_etag_is_412(client: Client, session: Session) -> None:
    _problem(_patch(client, session, FRAGMENT, If_Match='"stale"'), 412, "precondition_failed")


def test_ice_restart_is_422(client: Client, session: Session) -> None:
    _problem(_patch(client, session, FRAGMENT, If_Match="*"), 422, "ice_restart_unsupported")


def test_malformed_fragment_is_400(client: Client, session: Session) -> None:
    _problem(_patch(client, session, "a=candidate:garbage\r\n", If_Match=f'"{ETAG}"'),
             400, "bad_sdpfrag")
    _problem(_patch(client, session, b"\xff\xfe", If_Match=f'"{ETAG}"'), 400, "bad_sdpfrag")


def test_wrong_content_type_is_415(client: Client, session: Session) -> None:
    _problem(_patch(client, session, FRAGMENT, If_Match=f'"{ETAG}"', content_type="text/plain"),
             415, "unsupported")


def test_oversized_fragment_is_413(client: Client, session: Session) -> None:
    big = FRAGMENT + "a=x-pad:" + "x" * 70_000 + "\r\n"
    _problem(_patch(client, session, big, If_Match=f'"{ETAG}"'), 413, "too_large")


def test_patch_of_an_unknown_session_is_404(client: Client, db: None) -> None:
    response = client.patch("/v1/sessions/00000000-0000-0000-0000-000000000000", data=FRAGMENT,
                            content_type=TRICKLE, headers={"If-Match": f'"{ETAG}"'})
    _problem(response, 404, "not_found")


def test_preflight_allows_patch(client: Client) -> None:
    response = client.options("/v1/sessions/00000000-0000-0000-0000-000000000000",
                              HTTP_ORIGIN="https://app.example",
                              HTTP_ACCESS_CONTROL_REQUEST_METHOD="PATCH")
    assert response.status_code == 200
    assert "PATCH" in response["Access-Control-Allow-Methods"]
    assert "If-Match" in response["Access-Control-Allow-Headers"]
