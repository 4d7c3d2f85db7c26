"""Who may do what with which token: pure decisions over a ``Credential`` (no Django, no clock:
``now`` comes in). ``Denied`` carries the HTTP status and the RFC 6750 §3.1 error code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

SEND_TOKEN = "send Authorization: Bearer <API key or client secret>"


class CredentialKind(StrEnum):
    API_KEY = "api_key"  # long-lived, for servers
    CLIENT_SECRET = "client_secret"  # short-lived, minted by an API key, for browsers


@dataclass(frozen=True, slots=True)
class Credential:
    """A live (not revoked) token's rights, as read from the database for one request."""

    kind: CredentialKind
    api_key_id: int
    api_key_name: str
    client_secret_id: int | None = None
    region_code: str | None = None  # the key may only place sessions in this region
    rate_limit_per_minute: int | None = None  # offers per minute for the key and its secrets
    expires_at: datetime | None = None  # client secrets only


@dataclass(frozen=True, slots=True)
class Owner:
    """Who created a session (both None: created while authentication was off, anonymously)."""

    api_key_id: int | None
    client_secret_id: int | None


class Denied(Exception):
    """Refused for want of rights: 401 (no or a bad token) or 403 (a token without the right).
    ``bearer_error`` is RFC 6750 §3.1's ``error`` (None: the request carried no token)."""

    def __init__(self, status: int, code: str, detail: str, bearer_error: str | None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.bearer_error = status, code, detail, bearer_error


def unauthorized() -> Denied:
    return Denied(401, "unauthorized", SEND_TOKEN, None)


def invalid_token(detail: str = "unknown or revoked token") -> Denied:
    return Denied(401, "invalid_token", detail, "invalid_token")


def forbidden(code: str, detail: str) -> Denied:
    return Denied(403, code, detail, "insufficient_scope")


def check_offer(credential: Credential | None, *, required: bool, now: datetime) -> None:
    """May this caller create a session? A client secret only until it expires."""
    if credential is None:
        if required:
            raise unauthorized()
        return
    expires = credential.expires_at
    if credential.kind is CredentialKind.CLIENT_SECRET and expires is not None and now >= expires:
        raise invalid_token("client secret expired")


def offer_region(credential: Credential | None, pinned: str | None) -> str | None:
    """The region an offer may go to: a restricted key's own (``?region=`` elsewhere: 403),
    else what the caller pinned (None: steer freely)."""
    allowed = credential.region_code if credential is not None else None
    if allowed is None:
        return pinned
    if pinned and pinned != allowed:
        raise forbidden("region_forbidden", f"this key may only place sessions in {allowed}")
    return allowed


def check_mint(credential: Credential | None) -> Credential:
    """Only an API key mints client secrets (authentication on or off)."""
    if credential is None:
        raise Denied(401, "unauthorized", "send Authorization: Bearer <API key>", None)
    if credential.kind is not CredentialKind.API_KEY:
        raise forbidden("api_key_required", "only an API key can mint client secrets")
    return credential


def check_session_access(credential: Credential | None, owner: Owner, *, required: bool) -> None:
    """May this caller read, trickle to or end a session? Only with the token that created it
    or the API key behind it (an expired client secret still reaches its own live call)."""
    anonymous = owner.api_key_id is None and owner.client_secret_id is None
    if credential is None:
        if required or not anonymous:
            raise unauthorized()
        return
    if anonymous:
        return
    if credential.kind is CredentialKind.API_KEY and credential.api_key_id == owner.api_key_id:
        return
    if credential.client_secret_id is not None and credential.client_secret_id == (
        owner.client_secret_id
    ):
        return
    raise forbidden("not_owner", "this session was created with another token")
