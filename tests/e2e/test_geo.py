"""Geo-steering through the running system: three regions, a test City database, real calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from relays.ufrag import parse_keyring, validate_ufrag
from tests.e2e.conftest import Edge, start_edge, stop_edge
from tests.geo.mmdb import ASHBURN, DUBLIN, MUMBAI, NOT_IN_SAMPLE, write_city_db
from whip.client import Call, get_json, http_request

pytestmark = [pytest.mark.e2e]

# Addresses inside the test database's networks.
EUROPE, AMERICA, ASIA = "81.2.69.142", "216.160.83.56", "49.36.10.10"
assert DUBLIN.network.startswith("81.2.69.") and ASHBURN.network.startswith("216.160.83.")
assert MUMBAI.network.startswith("49.36.")


def _region(code: str, name: str, lat: float, lon: float, shard: int, default: bool = False
            ) -> dict[str, Any]:
    return {"code": code, "name": name, "latitude": lat, "longitude": lon, "default": default,
            "relays": [{"shard": shard}], "transceivers": [{"id": shard}]}


@pytest.fixture(scope="module")
def geo_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("geo")
    db = write_city_db(tmp / "city.mmdb")
    regions = [
        _region("eu-west", "Dublin", 53.35, -6.26, 1, default=True),
        _region("us-east", "Virginia", 38.95, -77.45, 2),
        _region("ap-south", "Mumbai", 19.08, 72.88, 3),
    ]
    edge = start_edge(tmp, redis_dbs(), regions, extra_env={
        "GEOIP_DATABASE": str(db), "HEARTBEAT_TTL": "2", "RATE_LIMIT_PER_MINUTE": "1000",
    })
    yield edge
    stop_edge(edge)


async def _offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _post(edge: Edge, sdp: str, forwarded_for: str | None) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/sdp"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    status, got, body = http_request("POST", edge.base_url + "/v1/sessions", sdp.encode(), headers)
    if status == 201:
        http_request("DELETE", edge.base_url + got["Location"], b"", {})
    return status, got, body.decode()


def _keys(edge: Edge) -> dict[int, bytes]:
    return parse_keyring(json.loads((edge.var_dir / "secrets.json").read_text())["UFRAG_KEYS"])


def _relay_for(edge: Edge, code: str) -> dict[str, Any]:
    region = next(r for r in edge.topology["regions"] if r["code"] == code)
    return dict(region["relays"][0])


@pytest.mark.parametrize(
    ("client", "expected", "reason"),
    [(EUROPE, "eu-west", "nearest"), (AMERICA, "us-east", "nearest"),
     (ASIA, "ap-south", "nearest"), (NOT_IN_SAMPLE, "eu-west", "default"),
     ("10.1.2.3", "eu-west", "default")],
)
async def test_offer_lands_in_nearest_region(
    geo_edge: Edge, client: str, expected: str, reason: str
) -> None:
    status, headers, answer = await asyncio.to_thread(_post, geo_edge, await _offer_sdp(), client)
    assert status == 201, answer
    assert (headers["X-Region"], headers["X-Region-Reason"]) == (expected, reason)
    relay = _relay_for(geo_edge, expected)
    candidates = [line.split() for line in answer.splitlines() if line.startswith("a=candidate:")]
    assert [(c[2], c[4], int(c[5])) for c in candidates] == [  # UDP first, then ICE-TCP
        ("udp", "127.0.0.1", relay["public_port"]), ("tcp", "127.0.0.1", relay["tcp_port"])]
    ufrag = next(line for line in answer.splitlines() if line.startswith("a=ice-ufrag:"))
    claims = validate_ufrag(ufrag.split(":", 1)[1], keys=_keys(geo_edge))
    region = next(r for r in geo_edge.topology["regions"] if r["code"] == expected)
    assert claims.shard == relay["shard"]
    assert claims.transceiver in {t["id"] for t in region["transceivers"]}


def test_regions_list_is_best_first_for_the_caller(geo_edge: Edge) -> None:
    status, _, body = http_request("GET", geo_edge.base_url + "/v1/regions", b"",
                                   {"X-Forwarded-For": ASIA})
    assert status == 200
    data = json.loads(body)
    assert [r["code"] for r in data["regions"]] == ["ap-south", "eu-west", "us-east"]
    assert data["client"]["location"]["country"] == "IN"
    assert all(r["status"] == "ok" for r in data["regions"])
    assert data["regions"][0]["distance_km"] < 100


def test_spoofed_left_hops_are_ignored(geo_edge: Edge) -> None:
    """The peer here is loopback (trusted): the right-most untrusted hop is the client."""
    status, headers, _ = _post(geo_edge, asyncio.run(_offer_sdp()), f"{ASIA}, {AMERICA}")
    # Right-most untrusted hop wins: the Asian address on the left is the client's own claim.
    assert status == 201 and headers["X-Region"] == "us-east"


async def test_full_call_through_a_non_default_region(geo_edge: Edge) -> None:
    call = Call(geo_edge.base_url, seconds=3.0, headers={"X-Forwarded-For": ASIA})
    await call.start()
    try:
        assert call.response_headers["X-Region"] == "ap-south"
        await call.wait_connected()
        await call.play()
        assert call.echo_ratio() >= 0.9
    finally:
        await call.stop()


def _set_enabled(edge: Edge, code: str, enabled: bool) -> None:
    """Flip a region through the running system's own database, as the admin would, and wait
    until the edge steers by it: another process's change reaches the edge's cached regions
    within ``geo.selectors.REGIONS_CACHE_TTL``."""
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    env = edge.manage_env()
    code_py = ("from geo.services import regions_set_enabled; "
               f"regions_set_enabled(codes=[{code!r}], enabled={enabled})")
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code_py],
                   env=env, check=True, cwd=ROOT, capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        regions = get_json(edge.base_url + "/v1/regions")["regions"]
        status = next(r for r in regions if r["code"] == code)["status"]
        if (status == "disabled") != enabled:
            return
        time.sleep(0.1)
    raise AssertionError(f"the edge still shows {code} as {status}")


async def test_disabled_nearest_region_falls_back_with_reason(geo_edge: Edge) -> None:
    _set_enabled(geo_edge, "ap-south", False)
    try:
        status, headers, _ = await asyncio.to_thread(_post, geo_edge, await _offer_sdp(), ASIA)
        assert status == 201
        assert headers["X-Region"] == "eu-west"  # Mumbai -> Dublin is nearer than Virginia
        assert headers["X-Region-Reason"] == "fallback:ap-south-disabled"
    finally:
        _set_enabled(geo_edge, "ap-south", True)


async def test_region_without_live_transceiver_falls_back(geo_edge: Edge) -> None:
    pid = geo_edge.children()["transceiver-3"]
    os.kill(pid, signal.SIGSTOP)  # hung, not crashed: its heartbeat stops and expires
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            regions = get_json(geo_edge.base_url + "/v1/regions")["regions"]
            if next(r for r in regions if r["code"] == "ap-south")["status"] != "ok":
                break
            await asyncio.sleep(0.2)
        status, headers, _ = await asyncio.to_thread(_post, geo_edge, await _offer_sdp(), ASIA)
        assert status == 201
        assert headers["X-Region"] == "eu-west"
        assert headers["X-Region-Reason"] == "fallback:ap-south-no_transceiver"
    finally:
        os.kill(pid, signal.SIGCONT)
