"""Who may do what with which token: the pure rules, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from access.rules import (
    Credential,
    CredentialKind,
    Denied,
    Owner,
    check_mint,
    check_offer,
    check_session_access,
    offer_region,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY = Credential(CredentialKind.API_KEY, api_key_id=1, api_key_name="server")
OTHER_KEY = Credential(CredentialKind.API_KEY, api_key_id=2, api_key_name="other")
SECRET = Credential(CredentialKind.CLIENT_SECRET, api_key_id=1, api_key_name="server",
                    client_secret_id=10, expires_at=NOW + timedelta(seconds=1))
SIBLING = Credential(CredentialKind.CLIENT_SECRET, api_key_id=1, api_key_name="server",
                     client_secret_id=11, expires_at=NOW + timedelta(minutes=10))
EU_KEY = Credential(CredentialKind.API_KEY, api_key_id=3, api_key_name="eu",
                    region_code="eu-west")


def _denied(call: object, status: int, code: str, error: str | None) -> None:
    with pytest.raises(Denied) as caught:
        call()  # type: ignore[operator]
    exc = caught.value
    assert (exc.status, exc.code, exc.bearer_error) == (status, code, error)


def test_offers_need_a_token_only_when_required() -> None:
    check_offer(None, required=False, now=NOW)
    _denied(lambda: check_offer(None, required=True, now=NOW), 401, "unauthorized", None)
    check_offer(KEY, required=True, now=NOW)


def test_a_client_secret_creates_sessions_until_it_expires() -> None:
    check_offer(SECRET, required=True, now=NOW)
    later = NOW + timedelta(seconds=1)
    _denied(lambda: check_offer(SECRET, required=True, now=later), 401, "invalid_token",
            "invalid_token")
    _denied(lambda: check_offer(SECRET, required=False, now=later), 401, "invalid_token",
            "invalid_token")


def test_a_region_restricted_key_places_only_in_its_region() -> None:
    assert offer_region(EU_KEY, None) == "eu-west"
    assert offer_region(EU_KEY, "eu-west") == "eu-west"
    _denied(lambda: offer_region(EU_KEY, "us-east"), 403, "region_forbidden",
            "insufficient_scope")
    assert offer_region(KEY, "us-east") == "us-east" and offer_region(None, None) is None


def test_only_an_api_key_mints_client_secrets() -> None:
    assert check_mint(KEY) is KEY
    _denied(lambda: check_mint(SECRET), 403, "api_key_required", "insufficient_scope")
    _denied(lambda: check_mint(None), 401, "unauthorized", None)


def test_a_session_answers_only_its_token_or_the_key_behind_it() -> None:
    by_secret = Owner(api_key_id=1, client_secret_id=10)
    check_session_access(SECRET, by_secret, required=True)
    check_session_access(KEY, by_secret, required=True)
    for stranger in (SIBLING, OTHER_KEY):
        _denied(lambda s=stranger: check_session_access(s, by_secret, required=True),
                403, "not_owner", "insufficient_scope")
    by_key = Owner(api_key_id=1, client_secret_id=None)
    check_session_access(KEY, by_key, required=True)
    _denied(lambda: check_session_access(SIBLING, by_key, required=True), 403, "not_owner",
            "insufficient_scope")


def test_a_session_made_with_a_token_needs_it_even_with_authentication_off() -> None:
    _denied(lambda: check_session_access(None, Owner(1, 10), required=False), 401,
            "unauthorized", None)
    check_session_access(None, Owner(None, None), required=False)  # anonymous: as before
    _denied(lambda: check_session_access(None, Owner(None, None), required=True), 401,
            "unauthorized", None)
    check_session_access(OTHER_KEY, Owner(None, None), required=True)


def test_an_expired_client_secret_still_reaches_its_own_live_call() -> None:
    expired = Credential(CredentialKind.CLIENT_SECRET, api_key_id=1, api_key_name="server",
                         client_secret_id=10, expires_at=NOW - timedelta(hours=1))
    check_session_access(expired, Owner(api_key_id=1, client_secret_id=10), required=True)
