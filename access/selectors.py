"""Reads: the live credential a token stands for (one indexed query, no cache, so a revocation
counts from the next request on), and the key list."""

from __future__ import annotations

from django.db.models import QuerySet

from access.models import ApiKey, ClientSecret
from access.rules import Credential, CredentialKind, invalid_token
from access.tokens import CLIENT_SECRET_PREFIX, hash_token, parse_bearer


def _key_credential(key: ApiKey, secret: ClientSecret | None) -> Credential:
    return Credential(
        kind=CredentialKind.API_KEY if secret is None else CredentialKind.CLIENT_SECRET,
        api_key_id=key.pk, api_key_name=key.name,
        client_secret_id=None if secret is None else secret.pk,
        region_code=key.region.code if key.region is not None else None,
        rate_limit_per_minute=key.rate_limit_per_minute,
        expires_at=None if secret is None else secret.expires_at,
    )


def credential_for_token(*, token: str) -> Credential | None:
    """The credential of a live token: a key not revoked, or a secret whose key is not revoked
    (expired or not: the rules decide). None for anything else."""
    digest = hash_token(token)
    if token.startswith(CLIENT_SECRET_PREFIX):
        secret = (ClientSecret.objects.select_related("api_key__region")
                  .filter(secret_hash=digest, api_key__revoked_at__isnull=True).first())
        return None if secret is None else _key_credential(secret.api_key, secret)
    key = (ApiKey.objects.select_related("region")
           .filter(key_hash=digest, revoked_at__isnull=True).first())
    return None if key is None else _key_credential(key, None)


def credential_for_header(*, authorization: str | None) -> Credential | None:
    """The credential an ``Authorization`` header carries; None without a Bearer token;
    ``Denied`` (401 invalid_token) for a malformed, unknown or revoked one."""
    try:
        token = parse_bearer(authorization)
    except ValueError as exc:
        raise invalid_token(str(exc)) from None
    if token is None:
        return None
    credential = credential_for_token(token=token)
    if credential is None:
        raise invalid_token()
    return credential


def apikey_list() -> QuerySet[ApiKey]:
    return ApiKey.objects.select_related("region").order_by("name")
