"""Bearer tokens: minting, hashing and the ``Authorization`` header (RFC 6750 §2.1), and the
``WWW-Authenticate`` challenge (RFC 6750 §3). Pure: randomness comes in as bytes.

A token is ``<kind prefix><base64url of 32 random bytes>``. Only its SHA-256 is stored: 256
random bits need no slow hash (there is no dictionary to try), and lookup by hash is one index
read."""

from __future__ import annotations

import base64
import hashlib
import re

TOKEN_BYTES = 32  # 256 bits of entropy
API_KEY_PREFIX = "ek_"
CLIENT_SECRET_PREFIX = "ecs_"
VISIBLE_CHARS = 8  # random characters kept beside the kind prefix, to tell keys apart
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")  # RFC 6750 §2.1 b64token
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"' and no '\').
DESCRIPTION_CHARS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*\Z")
MAX_TOKEN_CHARS = 200


def mint_token(prefix: str, random_bytes: bytes) -> str:
    """A token of kind ``prefix`` from ``random_bytes`` (at least ``TOKEN_BYTES`` of them)."""
    if len(random_bytes) < TOKEN_BYTES:
        raise ValueError("too few random bytes")
    return prefix + base64.urlsafe_b64encode(random_bytes).decode().rstrip("=")


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def visible_prefix(token: str) -> str:
    """What may be shown of a token: its kind and the first few random characters."""
    kind = CLIENT_SECRET_PREFIX if token.startswith(CLIENT_SECRET_PREFIX) else API_KEY_PREFIX
    return token[: len(kind) + VISIBLE_CHARS]


def parse_bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1); None when the header is
    absent or names another scheme; ``ValueError`` when a Bearer credential is malformed."""
    if header is None or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.strip()
    if not token or len(token) > MAX_TOKEN_CHARS or not B64TOKEN.match(token):
        raise ValueError("malformed bearer token")
    return token


def bearer_challenge(realm: str, error: str | None = None, description: str = "") -> str:
    """A ``WWW-Authenticate`` value (RFC 6750 §3): no ``error`` when the request carried no
    credentials (§3.1), else ``error`` and a description of the allowed characters."""
    parts = [f'realm="{realm}"']
    if error is not None:
        parts.append(f'error="{error}"')
        if description:
            if not DESCRIPTION_CHARS.match(description):
                raise ValueError("bad error_description characters")
            parts.append(f'error_description="{description}"')
    return "Bearer " + ", ".join(parts)
