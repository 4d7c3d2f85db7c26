from __future__ import annotations

import ipaddress

import pytest

from geo.client_address import client_address, parse_ip, parse_trusted_proxies

LOOPBACK = parse_trusted_proxies(["127.0.0.0/8", "::1/128"])
FLEET = parse_trusted_proxies(["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8"])


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies([" 10.0.0.0/8 ", "", "2001:db8::/32", "192.0.2.7"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert parse_trusted_proxies([]) == ()


@pytest.mark.parametrize("spec", ["10.0.0.0/33", "not-a-cidr", "10.0.0.1/8", "::1/129"])
def test_parse_trusted_proxies_rejects_bad_cidrs(spec: str) -> None:
    with pytest.raises(ValueError, match="bad trusted proxy CIDR"):
        parse_trusted_proxies(["127.0.0.0/8", spec])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9:4711 ", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("unknown", None),
        ("_hidden", None),
        ("[2001:db8::1", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    address = parse_ip(text)
    assert (str(address) if address is not None else None) == expected


def test_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_address("198.51.100.4", "203.0.113.9", LOOPBACK) == "198.51.100.4"
    assert client_address("2001:db8::5", "203.0.113.9", LOOPBACK) == "2001:db8::5"


def test_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("127.0.0.1", None, LOOPBACK) == "127.0.0.1"
    assert client_address("::1", "", LOOPBACK) == "::1"


def test_trusted_peer_uses_right_most_untrusted_hop() -> None:
    assert client_address("127.0.0.1", "203.0.113.9", LOOPBACK) == "203.0.113.9"
    assert client_address("::1", "2001:db8::9", LOOPBACK) == "2001:db8::9"
    assert client_address("10.1.2.3", "203.0.113.9, 10.9.9.9", FLEET) == "203.0.113.9"
    assert client_address("fd00::2", "2001:db8::9, fd00::1", FLEET) == "2001:db8::9"


def test_spoofed_left_most_entries_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1, 127.0.0.1"; our proxy appended its peer.
    xff = "1.1.1.1, 127.0.0.1, 198.51.100.4"
    assert client_address("127.0.0.1", xff, LOOPBACK) == "198.51.100.4"


def test_all_hops_trusted_gives_left_most() -> None:
    assert client_address("127.0.0.1", "10.0.0.5, 10.0.0.6", FLEET) == "10.0.0.5"


def test_blank_entries_are_skipped_and_ports_stripped() -> None:
    xff = "203.0.113.9:5555, , [2001:db8::7]:443,"
    assert client_address("127.0.0.1", xff, LOOPBACK) == "2001:db8::7"


def test_malformed_hop_stops_the_walk_at_the_last_trusted_hop() -> None:
    # Skipping "unknown" would hand the client-written 1.1.1.1 through.
    assert client_address("127.0.0.1", "1.1.1.1, unknown", LOOPBACK) == "127.0.0.1"
    assert client_address("10.0.0.1", "1.1.1.1, garbage, 10.0.0.2", FLEET) == "10.0.0.2"


def test_v4_mapped_peer_is_normalised_before_the_trust_check() -> None:
    assert client_address("::ffff:127.0.0.1", "203.0.113.9", LOOPBACK) == "203.0.113.9"
    assert client_address("::ffff:198.51.100.4", None, LOOPBACK) == "198.51.100.4"


def test_unparseable_peer_is_returned_as_is() -> None:
    assert client_address("", "203.0.113.9", LOOPBACK) == ""
    assert client_address("unix:/run/daphne.sock", "203.0.113.9", LOOPBACK) == (
        "unix:/run/daphne.sock"
    )


def test_version_mismatch_is_not_trusted() -> None:
    v4_only = parse_trusted_proxies(["0.0.0.0/0"])
    assert client_address("2001:db8::5", "203.0.113.9", v4_only) == "2001:db8::5"
