"""Writes: create and revoke API keys, mint client secrets. The raw token is returned once and
never stored."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from access.models import ApiKey, ClientSecret
from access.rules import Credential, check_mint, forbidden
from access.tokens import (
    API_KEY_PREFIX,
    CLIENT_SECRET_PREFIX,
    TOKEN_BYTES,
    hash_token,
    mint_token,
    visible_prefix,
)
from geo.models import Region

SECRET_MIN_SECONDS, SECRET_MAX_SECONDS = 10, 7200
SECRET_DEFAULT_SECONDS = 600
DEMO_KEY_NAME = "demo"  # the key behind the open demo's client secrets (revoke it to close it)


@dataclass(frozen=True, slots=True)
class Minted:
    """A new token: its row and the raw value, shown once."""

    value: str
    expires_at: datetime | None


def apikey_create(
    *, name: str, region_code: str | None = None, rate_limit_per_minute: int | None = None
) -> tuple[ApiKey, str]:
    """A new API key; returns the row and the raw key (shown once). ``Region.DoesNotExist`` for
    an unknown region, ``ValidationError`` for a taken or bad name."""
    region = Region.objects.get(code=region_code) if region_code else None
    token = mint_token(API_KEY_PREFIX, secrets.token_bytes(TOKEN_BYTES))
    key = ApiKey(name=name, prefix=visible_prefix(token), key_hash=hash_token(token),
                 region=region, rate_limit_per_minute=rate_limit_per_minute)
    key.full_clean()
    key.save()
    return key, token


def apikey_revoke(*, name: str) -> bool:
    """Revoke key ``name`` (and so every client secret it minted) from the next request on;
    False when it was already revoked. ``ApiKey.DoesNotExist`` for an unknown name."""
    key = ApiKey.objects.get(name=name)
    return bool(ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True)
                .update(revoked_at=timezone.now()))


def _secret_for(key_id: int, seconds: int) -> Minted:
    if not SECRET_MIN_SECONDS <= seconds <= SECRET_MAX_SECONDS:
        raise ValueError(f"seconds must be {SECRET_MIN_SECONDS}..{SECRET_MAX_SECONDS}")
    token = mint_token(CLIENT_SECRET_PREFIX, secrets.token_bytes(TOKEN_BYTES))
    expires_at = timezone.now() + timedelta(seconds=seconds)
    ClientSecret.objects.create(secret_hash=hash_token(token), api_key_id=key_id,
                                expires_at=expires_at)
    return Minted(token, expires_at)


def client_secret_mint(*, credential: Credential | None, seconds: int) -> Minted:
    """A client secret of the caller's API key, valid for ``seconds`` (10..7200)."""
    key = check_mint(credential)
    return _secret_for(key.api_key_id, seconds)


def client_secrets_delete_expired(*, older_than_seconds: float) -> int:
    """Delete client secrets expired more than ``older_than_seconds`` ago that created no
    session (those stay: a session names the secret that made it)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    deleted, _ = ClientSecret.objects.filter(expires_at__lt=cutoff, sessions__isnull=True).delete()
    return deleted


@transaction.atomic
def client_secret_mint_demo(*, seconds: int) -> Minted:
    """A client secret for the open demo page, minted with the reserved ``demo`` key (created on
    first use; an operator who revokes it closes the demo)."""
    key = ApiKey.objects.filter(name=DEMO_KEY_NAME).first()
    if key is None:
        unusable = mint_token(API_KEY_PREFIX, secrets.token_bytes(TOKEN_BYTES))  # never shown
        key, _ = ApiKey.objects.get_or_create(
            name=DEMO_KEY_NAME,
            defaults={"prefix": visible_prefix(unusable), "key_hash": hash_token(unusable)},
        )
    if key.revoked_at is not None:
        raise forbidden("demo_closed", f"the open demo's API key {DEMO_KEY_NAME!r} is revoked")
    return _secret_for(key.pk, seconds)
