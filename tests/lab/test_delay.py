"""The delay line's pure core: link lookup from IPv4 headers, due times, loss."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from lab.delay import DelayLine, Outcome, parse_delay_config, parse_endpoints
from lab.plan import build_plan, delay_config_json


def ipv4(src: str, dst: str, payload: bytes = b"x") -> bytes:
    """A minimal IPv4 header (RFC 791 section 3.1) + payload; checksum left zero."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def line(loss: float = 0.0) -> DelayLine:
    return DelayLine(parse_delay_config(delay_config_json(build_plan(), loss=loss)))


def test_parse_endpoints() -> None:
    src, dst = parse_endpoints(ipv4("81.2.69.2", "198.18.3.10"))
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address("81.2.69.2")
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address("198.18.3.10")
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        parse_endpoints(b"\x60" + bytes(39))  # IPv6
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        parse_endpoints(b"\x45" + bytes(10))


def test_delay_follows_the_continents_of_both_ends() -> None:
    d = line()
    eu, na, asia = "81.2.69.2", "216.160.83.2", "49.36.0.2"
    relay = {"eu-west": "198.18.1.10", "us-east": "198.18.2.10", "ap-south": "198.18.3.10"}
    assert d.push(ipv4(eu, relay["eu-west"]), now=100.0, draw=0.5) is Outcome.DELAYED
    assert d.next_due() == pytest.approx(100.005)
    cases = [(eu, "us-east", 0.040), (asia, "us-east", 0.090), (na, "ap-south", 0.090),
             (asia, "ap-south", 0.005), (relay["us-east"], eu, 0.040)]
    for src, region, expected in cases:
        dst = relay.get(region, region)
        config = d.config
        assert config.delay_s(*parse_endpoints(ipv4(src, dst))) == pytest.approx(expected)


def test_packets_leave_in_due_order_not_arrival_order() -> None:
    d = line()
    far = ipv4("49.36.0.2", "198.18.2.10", b"far")  # 90 ms
    near = ipv4("49.36.0.2", "198.18.3.10", b"near")  # 5 ms
    d.push(far, now=0.0, draw=0.9)
    d.push(near, now=0.001, draw=0.9)
    assert d.pop_due(0.005) == []
    assert d.pop_due(0.006) == [near]
    assert d.pop_due(0.0899) == []
    assert d.pop_due(0.090) == [far]
    assert len(d) == 0 and d.next_due() is None


def test_unknown_and_non_ipv4_packets_pass_at_once() -> None:
    d = line()
    assert d.push(ipv4("8.8.8.8", "198.18.1.10"), now=5.0, draw=0.0) is Outcome.PASSED
    assert d.push(b"\x60" + bytes(39), now=5.0, draw=0.0) is Outcome.PASSED
    assert len(d.pop_due(5.0)) == 2


def test_loss_fraction_follows_the_draws() -> None:
    d = line(loss=0.1)
    rng = random.Random(7)
    packet = ipv4("81.2.69.2", "198.18.1.10")
    outcomes = [d.push(packet, now=0.0, draw=rng.random()) for _ in range(20_000)]
    lost = outcomes.count(Outcome.LOST) / len(outcomes)
    assert 0.09 < lost < 0.11
    assert d.counts[Outcome.LOST] + d.counts[Outcome.DELAYED] == 20_000
    assert len(d) == d.counts[Outcome.DELAYED]


def test_bad_configs_are_refused() -> None:
    good = delay_config_json(build_plan())
    with pytest.raises(ValueError, match="loss must be"):
        parse_delay_config({**good, "loss": 1.0})
    with pytest.raises(ValueError, match="delay must be"):
        parse_delay_config({**good, "one_way_ms": [["eu", "na", -1]]})
    with pytest.raises(ValueError, match="must be lists"):
        parse_delay_config({"sites": "x", "one_way_ms": []})
