"""Real calls across the lab: each continent's caller behind NAT is steered to its nearest
region, its audio echoes, and the first-hop RTT matches the configured WAN delays."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import pytest

from lab.client import offer_sdp
from lab.netns import inside
from lab.state import LabState, signal_group
from tests.lab.conftest import MIN_ECHO, PROBE_INTERVAL, VAR, Lab
from whip.client import bearer, http_request

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]  # the first test brings the lab up

RTT_TOLERANCE_MS = 5.0


@pytest.fixture(scope="session")
def measurements(lab: Lab, report: Callable[[str], None]
                 ) -> dict[tuple[str, str], dict[str, Any]]:
    """(continent, region or "nearest") -> the client's result, one call each."""
    results = {}
    for client in lab.clients():
        started = time.monotonic()
        results[(client["continent"], "nearest")] = lab.run_client(client["netns"])
        for region in lab.data["regions"]:
            if region != client["expected_region"]:
                results[(client["continent"], region)] = lab.run_client(
                    client["netns"], "--region", region)
        report(f"[lab test] {client['continent']}: 3 calls in {time.monotonic() - started:.1f}s")
    _table(lab, results, report)
    return results


def _table(lab: Lab, results: dict[tuple[str, str], dict[str, Any]],
           report: Callable[[str], None]) -> None:
    report("continent  region    why        rtt ms (want)  | rtt ms to the other regions (want)"
           "   [min of 10 STUN pings; median in brackets]")
    for (continent, pin), result in results.items():
        call, rtt, med = result["call"], result["rtt_ms"], result["rtt_median_ms"]
        region = call.get("region") or pin
        want = lab.data["delays_ms"][continent]
        others = "  ".join(f"{code} {rtt[code]} [{med[code]}] ({2 * want[code]:g})"
                           for code in lab.data["regions"] if code != region)
        report(f"{continent:10} {region:9} {call.get('reason', call.get('error')):10} "
               f"{rtt[region]:>7} [{med[region]}] ({2 * want[region]:g})   | {others}   "
               f"echo {call.get('echo_ratio')}")


def _rtt_ok(measured: float | None, one_way_ms: float) -> bool:
    return measured is not None and abs(measured - 2 * one_way_ms) <= RTT_TOLERANCE_MS


def test_every_continent_is_steered_to_its_nearest_region_and_echoes(
    lab: Lab, measurements: dict[tuple[str, str], dict[str, Any]]
) -> None:
    for client in lab.clients():
        result = measurements[(client["continent"], "nearest")]
        call = result["call"]
        assert call.get("region") == client["expected_region"], result
        assert call["reason"] == "nearest", result
        assert call["echo_ratio"] >= MIN_ECHO, result
        delays = lab.data["delays_ms"][client["continent"]]
        for code, rtt in result["rtt_ms"].items():
            assert _rtt_ok(rtt, delays[code]), (client["continent"], code, rtt, delays[code])


def test_pinning_another_region_works_and_costs_its_longer_path(
    lab: Lab, measurements: dict[tuple[str, str], dict[str, Any]]
) -> None:
    for client in lab.clients():
        continent, nearest = client["continent"], client["expected_region"]
        near_rtt = measurements[(continent, "nearest")]["rtt_ms"][nearest]
        for region in lab.data["regions"]:
            if region == nearest:
                continue
            result = measurements[(continent, region)]
            assert result["call"].get("region") == region, result
            assert result["call"]["reason"] == "pinned", result
            assert result["call"]["echo_ratio"] >= MIN_ECHO, result
            assert _rtt_ok(result["rtt_ms"][region], lab.data["delays_ms"][continent][region])
            assert result["rtt_ms"][region] > near_rtt + 2 * RTT_TOLERANCE_MS


def test_callers_reach_public_addresses_only(lab: Lab) -> None:
    """Through NAT a caller reaches the LB, but neither the backbone nor the real internet."""
    client = lab.clients()[0]["netns"]
    lb = lab.data["signaling_url"].removeprefix("http://").split(":")[0]
    redis_host = next(h for h in lab.data["hosts"] if h["role"] == "core")["addresses"][0]
    for host, port, reachable in ((lb, 80, True), (redis_host, 6379, False),
                                  ("8.8.8.8", 53, False)):
        with inside(client), socket.socket() as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((host, port))
                connected = True
            except OSError:
                connected = False
        assert connected is reachable, (host, port)


def test_the_fleet_lets_in_only_callers_with_a_key(lab: Lab) -> None:
    """The manifests' AUTH_REQUIRED=1 holds through the load balancer: an offer without a key or
    with a made-up one is refused with problem+json 401 and leaves no session; the key made
    with ``manage.py apikey create`` (every other lab call carries it) is let in."""
    client, url = lab.clients()[0]["netns"], lab.data["signaling_url"] + "/v1/sessions"
    sdp = asyncio.run(offer_sdp()).encode()
    refused = []
    for token in (None, "sk-made-up-" + "x" * 32):
        with inside(client):
            status, headers, body = http_request(
                "POST", url, sdp, {"Content-Type": "application/sdp", **bearer(token)})
        refused.append(status)
        assert headers["Content-Type"] == "application/problem+json", body[:200]
        assert "Location" not in headers
    with inside(client):
        status, headers, _ = http_request(
            "POST", url, sdp, {"Content-Type": "application/sdp", **bearer(lab.api_key)})
        assert status == 201
        deleted, _, _ = http_request("DELETE", urljoin(url, headers["Location"]), b"",
                                     bearer(lab.api_key))
    assert refused == [401, 401]
    assert deleted == 200


def test_a_dead_relay_sends_its_callers_to_the_next_region(
    lab: Lab, measurements: dict[tuple[str, str], dict[str, Any]],
    report: Callable[[str], None], breaks_lab: None,
) -> None:
    """Runs last (it breaks the lab): kill eu-west's relay, eu offers fall back to us-east."""
    state = LabState.load(VAR / "state.json")
    relay = next(p for p in state.processes if p.name == "relay-eu-west")
    eu = next(c for c in lab.clients() if c["continent"] == "eu")
    offering = lab.start_client(eu["netns"], "--until-fallback", str(10 * PROBE_INTERVAL))
    try:
        first = json.loads(offering.stdout.readline() if offering.stdout else "{}")
        assert first.get("offering", {}).get("region") == "eu-west", first
        killed_at = time.monotonic()
        signal_group(relay, signal.SIGKILL)
        out, err = offering.communicate(timeout=60)
    finally:
        offering.kill()
    assert offering.returncode == 0, err[-3000:]
    fallback = json.loads(out.strip().splitlines()[-1])["fallback"]
    assert fallback["at"] is not None, fallback
    elapsed = fallback["at"] - killed_at
    report(f"[lab test] relay eu-west killed: eu offers went to {fallback['region']} "
           f"({fallback['reason']}) after {elapsed:.2f}s, {fallback['tries']} offers")
    assert fallback["region"] == "us-east"
    assert fallback["reason"].startswith("fallback:eu-west")
    assert elapsed <= 3 * PROBE_INTERVAL
    after = lab.run_client(eu["netns"])["call"]
    assert after.get("region") == "us-east" and after["echo_ratio"] >= MIN_ECHO, after
