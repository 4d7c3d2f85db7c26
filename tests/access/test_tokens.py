"""Bearer tokens (RFC 6750): minting, hashing, the Authorization header and the challenge."""

from __future__ import annotations

import hashlib

import pytest

from access.tokens import (
    API_KEY_PREFIX,
    CLIENT_SECRET_PREFIX,
    bearer_challenge,
    hash_token,
    mint_token,
    parse_bearer,
    visible_prefix,
)

RANDOM = bytes(range(32))


def test_a_token_carries_its_kind_and_all_of_its_random_bytes() -> None:
    token = mint_token(API_KEY_PREFIX, RANDOM)
    assert token.startswith("ek_") and len(token) == 3 + 43  # 256 bits, base64url, no padding
    assert mint_token(API_KEY_PREFIX, RANDOM) == token
    assert mint_token(API_KEY_PREFIX, bytes(32)) != token
    assert parse_bearer(f"Bearer {token}") == token  # its alphabet is b64token's


def test_too_few_random_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="too few random bytes"):
        mint_token(API_KEY_PREFIX, bytes(16))


def test_only_the_sha256_is_kept_and_a_short_prefix_shown() -> None:
    token = mint_token(CLIENT_SECRET_PREFIX, RANDOM)
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert visible_prefix(token) == token[:12] and token.startswith(visible_prefix(token))
    assert visible_prefix(mint_token(API_KEY_PREFIX, RANDOM)) == "ek_AAECAwQF"


@pytest.mark.parametrize(("header", "token"), [
    (None, None), ("", None), ("Basic dXNlcjpwdw==", None),  # no Bearer credentials
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),  # scheme: any case
    ("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g=="),
])
def test_authorization_header(header: str | None, token: str | None) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b", 'Bearer "abc"',
                                    "Bearer =abc", "Bearer " + "a" * 201])
def test_malformed_bearer_credentials(header: str) -> None:
    with pytest.raises(ValueError, match="malformed bearer token"):
        parse_bearer(header)


def test_challenge_names_the_error_only_when_a_token_was_sent() -> None:
    assert bearer_challenge("edge") == 'Bearer realm="edge"'
    assert bearer_challenge("edge", "invalid_token", "client secret expired") == (
        'Bearer realm="edge", error="invalid_token", error_description="client secret expired"'
    )
    with pytest.raises(ValueError, match="error_description"):
        bearer_challenge("edge", "invalid_token", 'a "quoted" word')
