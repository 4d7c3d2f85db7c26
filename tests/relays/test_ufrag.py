from __future__ import annotations

import base64
import random
import re

import pytest

from relays import ufrag
from tests.relays.conftest import FIXTURE_KEYS, FIXTURE_UFRAG

KEYS = {1: b"current", 2: b"older"}
ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")  # RFC 8445 section 5.3


def _mint(**overrides: object) -> str:
    args: dict[str, object] = {
        "shard": 7, "transceiver": 3, "key_id": 1, "key": b"current", "nonce": b"\x01\x02\x03\x04"
    }
    args.update(overrides)
    return ufrag.mint_ufrag(**args)  # type: ignore[arg-type]


def test_fixture_ufrag_decodes() -> None:
    claims = ufrag.validate_ufrag(FIXTURE_UFRAG, keys=FIXTURE_KEYS)
    assert claims == ufrag.UfragClaims(1, 1, 7, 3, bytes.fromhex("0badf00d"))


def test_parse_ufrag_does_not_authenticate() -> None:
    forged = _mint(key=b"attacker", shard=9)
    assert ufrag.parse_ufrag(forged).shard == 9
    verified = ufrag.validate_ufrag(FIXTURE_UFRAG, keys=FIXTURE_KEYS)
    assert ufrag.parse_ufrag(FIXTURE_UFRAG) == verified
    with pytest.raises(ValueError, match="^bad ufrag length$"):
        ufrag.parse_ufrag("abc")


@pytest.mark.parametrize(("shard", "xcvr"), [(1, 1), (0, 0), (65535, 65535), (7, 3)])
def test_round_trip(shard: int, xcvr: int) -> None:
    text = _mint(shard=shard, transceiver=xcvr)
    assert len(text) == ufrag.UFRAG_LENGTH <= 32
    assert ICE_CHARS.match(text)
    claims = ufrag.validate_ufrag(text, keys=KEYS)
    assert (claims.shard, claims.transceiver, claims.key_id, claims.version) == (shard, xcvr, 1, 1)
    assert claims.nonce == b"\x01\x02\x03\x04"


def test_rotation_older_key_still_validates() -> None:
    text = _mint(key_id=2, key=b"older")
    assert ufrag.validate_ufrag(text, keys=KEYS).key_id == 2
    with pytest.raises(ValueError, match="^unknown ufrag key$"):
        ufrag.validate_ufrag(text, keys={1: b"current"})


def test_nonce_changes_ufrag() -> None:
    assert _mint(nonce=b"\x00\x00\x00\x00") != _mint(nonce=b"\x00\x00\x00\x01")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shard": -1}, "node id out of range"),
        ({"transceiver": 65536}, "node id out of range"),
        ({"key_id": 16}, "key id out of range"),
        ({"nonce": b"abc"}, "nonce must be 4 bytes"),
    ],
)
def test_mint_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        _mint(**overrides)


def _flip(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short", "bad ufrag length"),
        ("A" * 25, "bad ufrag length"),
        ("!" * 24, "bad ufrag encoding"),
        ("é" * 24, "bad ufrag encoding"),
        ("A" * 20 + "AA==", "bad ufrag encoding"),  # padding: 16 bytes, not 18
        (base64.b64encode(b"\x21" + b"\x00" * 17).decode(), "unknown ufrag version"),
        (base64.b64encode(b"\x19" + b"\x00" * 17).decode(), "unknown ufrag key"),
    ],
)
def test_validate_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        ufrag.validate_ufrag(text, keys=KEYS)


@pytest.mark.parametrize("index", [1, 3, 5, 8, 9, 17])  # shard, xcvr, nonce, mac bytes
def test_tampering_fails_mac(index: int) -> None:
    with pytest.raises(ValueError, match="^bad ufrag mac$"):
        ufrag.validate_ufrag(_flip(_mint(), index), keys=KEYS)


def test_wrong_key_fails_mac() -> None:
    with pytest.raises(ValueError, match="^bad ufrag mac$"):
        ufrag.validate_ufrag(_mint(key=b"attacker"), keys=KEYS)


def test_random_strings_raise_only_value_error() -> None:
    rng = random.Random(8445)
    alphabet = "ABCxyz019+/=:!é "
    for _ in range(3000):
        length = rng.choice([24, 24, 24, rng.randrange(0, 40)])
        text = "".join(rng.choice(alphabet) for _ in range(length))
        try:
            ufrag.validate_ufrag(text, keys=KEYS)
        except ValueError:
            continue
        pytest.fail(f"random ufrag {text!r} validated")  # 72-bit MAC: never by chance


def test_password() -> None:
    assert len(ufrag.mint_password(b"\x00" * 16)) == 22  # RFC 8445 section 5.3: >= 22 chars
    password = ufrag.mint_password(bytes(range(ufrag.PASSWORD_BYTES)))
    assert len(password) == 24 and ICE_CHARS.match(password)
    with pytest.raises(ValueError, match="^password needs >= 128 random bits$"):
        ufrag.mint_password(b"\x00" * 15)


def test_parse_keyring() -> None:
    assert ufrag.parse_keyring("2:new, 1:old,") == {2: b"new", 1: b"old"}
    assert next(iter(ufrag.parse_keyring("2:new,1:old"))) == 2  # first entry mints
    assert ufrag.parse_keyring("3:a:b") == {3: b"a:b"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty keyring"),
        (" , ", "empty keyring"),
        ("secret", "bad keyring entry"),
        ("x:secret", "bad keyring entry"),
        ("1:", "bad keyring entry"),
        ("²:secret", "bad keyring entry"),
        ("16:secret", "key id out of range"),
    ],
)
def test_parse_keyring_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        ufrag.parse_keyring(spec)
