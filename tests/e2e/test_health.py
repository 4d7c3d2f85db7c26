"""Health checks, capacity and drain through ``manage.py up`` with its real Celery worker + beat.

One edge, tests in order: near region (2 relay shards, 2 transceivers of capacity 2) and a far
region. ``--no-restart`` keeps killed nodes dead (up restarts crashed children otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import redis

from fleet.keys import health_key
from health.machine import ProbeMemory
from tests.e2e.conftest import ROOT, Edge, start_edge, stop_edge
from whip.client import Call, get_json, http_request

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)

INTERVAL = 0.5  # HEALTH_PROBE_INTERVAL for this edge
WAIT = 30.0  # generous bound for anything eventual: the machine may be busy


@pytest.fixture(scope="module")
def health_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    regions = [
        {"code": "near", "name": "Near", "latitude": 0.0, "longitude": 0.0, "default": True,
         "relays": [{"shard": 11}, {"shard": 12}],
         "transceivers": [{"id": 11, "capacity": 2}, {"id": 12, "capacity": 2}]},
        {"code": "far", "name": "Far", "latitude": 10.0, "longitude": 10.0,
         "relays": [{"shard": 13}], "transceivers": [{"id": 13, "capacity": 20}]},
    ]
    edge = start_edge(
        tmp_path_factory.mktemp("health"), redis_dbs(), regions,
        extra_env={"HEALTH_PROBE_INTERVAL": str(INTERVAL),  # probe timeout: 0.8 x interval
                   "HEALTH_REBALANCE_INTERVAL": "1", "RATE_LIMIT_PER_MINUTE": "1000",
                   # offers here never connect: admission caps would hide the placement rules
                   "MAX_PENDING_PER_CLIENT": "100", "TRANSCEIVER_PENDING_SHARE": "1"},
        extra_args=["--no-restart", "relay-12", "--no-restart", "transceiver-11",
                    "--no-restart", "transceiver-12"],
    )
    yield edge
    stop_edge(edge)


def nodes(edge: Edge) -> dict[str, dict[str, Any]]:
    """``relay-N`` / ``transceiver-N`` -> its entry in GET /v1/regions."""
    found = {}
    for region in get_json(edge.base_url + "/v1/regions")["regions"]:  # type: ignore[union-attr]
        for relay in region["relays"]:
            found[f"relay-{relay['shard']}"] = relay
        for xcvr in region["transceivers"]:
            found[f"transceiver-{xcvr['id']}"] = xcvr
    return found


def wait_for(edge: Edge, name: str, state: str) -> float:
    """Seconds until node ``name`` has ``state`` in GET /v1/regions."""
    started = time.monotonic()
    while nodes(edge)[name]["state"] != state:
        assert time.monotonic() - started < WAIT, (name, nodes(edge)[name], edge.output()[-3000:])
        time.sleep(0.05)
    return time.monotonic() - started


def offer(edge: Edge) -> tuple[int, dict[str, str], str]:
    async def sdp() -> str:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        text = pc.localDescription.sdp
        await pc.close()
        return str(text)

    status, headers, body = http_request("POST", edge.base_url + "/v1/sessions",
                                         asyncio.run(sdp()).encode(),
                                         {"Content-Type": "application/sdp"})
    return status, headers, body.decode()


def delete(edge: Edge, headers: dict[str, str]) -> None:
    http_request("DELETE", edge.base_url + headers["Location"], b"", {})


def memory(edge: Edge, kind: str, node_id: int) -> ProbeMemory:
    raw = redis.Redis.from_url(edge.redis_url).get(health_key(kind, node_id))
    return ProbeMemory.from_json(raw)


def manage(edge: Edge, *args: str) -> str:
    env = edge.manage_env()
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip().splitlines()[-1]  # shell may print its auto-imports first


def test_every_node_is_probed_healthy_and_the_relay_rtt_recorded(health_edge: Edge) -> None:
    for name in nodes(health_edge):
        wait_for(health_edge, name, "healthy")
    entry = nodes(health_edge)["transceiver-11"]
    assert entry["state_reason"] == "probes ok" and entry["state_changed_at"]
    relay = memory(health_edge, "relay", 11)
    xcvr = memory(health_edge, "transceiver", 11)
    assert relay.rtt_ms is not None and relay.failures == 0
    logger.info("probe RTT: relay STUN %.2f ms, transceiver ping %.2f ms, loop lag %.1f ms",
                relay.rtt_ms, xcvr.rtt_ms or 0, xcvr.loop_lag_ms or 0)


def test_full_transceivers_are_skipped_then_the_next_region_serves(health_edge: Edge) -> None:
    placed: list[dict[str, str]] = []
    try:
        for _ in range(4):  # two transceivers of capacity 2 in the nearest region
            status, headers, body = offer(health_edge)
            assert status == 201, body
            assert headers["X-Region"] == "near"
            placed.append(headers)
        assert sorted(h["X-Transceiver"] for h in placed) == ["11", "11", "12", "12"]
        status, headers, body = offer(health_edge)
        assert status == 201, body
        placed.append(headers)
        assert (headers["X-Region"], headers["X-Transceiver"]) == ("far", "13")
        assert headers["X-Region-Reason"] == "fallback:near-full"
    finally:
        for headers in placed:
            delete(health_edge, headers)
    for name in ("transceiver-11", "transceiver-12"):  # probes saw them full, now back
        wait_for(health_edge, name, "healthy")


async def test_drained_transceiver_keeps_its_call_then_exits(health_edge: Edge) -> None:
    call = Call(health_edge.base_url, seconds=6.0)
    await call.start()
    try:
        xcvr = call.response_headers["X-Transceiver"]
        assert call.response_headers["X-Region"] == "near"
        pid = health_edge.children()[f"transceiver-{xcvr}"]
        await call.wait_connected()
        out = await asyncio.to_thread(manage, health_edge, "drain", "transceiver", xcvr)
        assert "draining" in out
        for _ in range(3):
            status, headers, body = await asyncio.to_thread(offer, health_edge)
            assert status == 201, body
            assert headers["X-Transceiver"] != xcvr
            delete(health_edge, headers)
        await call.play()
        assert call.echo_ratio() >= 0.9, call.echo_ratio()  # echo all through the drain
        assert psutil.pid_exists(pid) and nodes(health_edge)[f"transceiver-{xcvr}"]["state"] \
            == "draining"
    finally:
        await call.stop()
    started = time.monotonic()
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() - started < WAIT, "drained transceiver did not exit"
        await asyncio.sleep(0.1)
    logger.info("drained transceiver exited %.2f s after its last call ended",
                time.monotonic() - started)
    while not any(f"transceiver-{xcvr} exited with 0; not restarting" in line
                  for line in health_edge.lines):  # up polls its children every 0.2 s
        assert time.monotonic() - started < WAIT, health_edge.output()[-3000:]
        await asyncio.sleep(0.1)
    await asyncio.to_thread(wait_for, health_edge, f"transceiver-{xcvr}", "down")


def test_killed_relay_shard_is_replaced_by_the_other_shard(health_edge: Edge) -> None:
    os.kill(health_edge.children()["relay-12"], signal.SIGKILL)
    took = wait_for(health_edge, "relay-12", "down")
    logger.info("relay shard marked down %.2f s after SIGKILL (%.1f probe intervals)",
                took, took / INTERVAL)
    reason = nodes(health_edge)["relay-12"]["state_reason"]
    assert "missed probes" in reason and "STUN" in reason, reason
    port = health_edge.relay_public(11)[1]
    for _ in range(3):
        status, headers, body = offer(health_edge)
        assert status == 201, body
        assert headers["X-Relay-Shard"] == "11"
        assert f" 127.0.0.1 {port} typ host" in body
        delete(health_edge, headers)


def test_killed_transceiver_is_marked_down_and_offers_go_elsewhere(health_edge: Edge) -> None:
    alive = [n for n, e in nodes(health_edge).items()
             if n in ("transceiver-11", "transceiver-12") and e["state"] == "healthy"]
    assert len(alive) == 1, nodes(health_edge)  # the other one was drained
    os.kill(health_edge.children()[alive[0]], signal.SIGKILL)
    took = wait_for(health_edge, alive[0], "down")
    logger.info("transceiver marked down %.2f s after SIGKILL (%.1f probe intervals)",
                took, took / INTERVAL)
    assert took < 10 * INTERVAL + 5, took  # loose: 3 intervals when the machine is idle
    for _ in range(4):
        status, headers, body = offer(health_edge)
        assert status == 201, body  # never a 5xx
        assert (headers["X-Region"], headers["X-Transceiver"]) == ("far", "13")
        assert headers["X-Region-Reason"] == "fallback:near-no_transceiver"
        delete(health_edge, headers)


def test_celery_restart_loses_no_state_and_a_repeated_probe_changes_nothing(
    health_edge: Edge,
) -> None:
    before = {n: (e["state"], e["state_changed_at"]) for n, e in nodes(health_edge).items()}
    killed_at = time.time()
    for name in ("celery-worker", "celery-beat"):
        os.killpg(health_edge.children()[name], signal.SIGKILL)
    started = time.monotonic()
    while memory(health_edge, "transceiver", 13).at < killed_at + 1:  # probes run again
        assert time.monotonic() - started < 90, health_edge.output()[-3000:]
        time.sleep(0.2)
    after = {n: (e["state"], e["state_changed_at"]) for n, e in nodes(health_edge).items()}
    assert after == before
    tick = memory(health_edge, "transceiver", 13).tick
    code = ("from health.tasks import transceiver_probe_task as t; "
            f"print(t({13}, {tick}), t({13}, {tick}), t({13}, {tick - 1}))")
    assert manage(health_edge, "shell", "-c", code).split() == ["None", "None", "None"]
    assert memory(health_edge, "transceiver", 13).failures == 0
    transitions = json.loads(manage(health_edge, "shell", "-c", (
        "import json; from health.models import NodeTransition as T; "
        "print(json.dumps(list(T.objects.filter(kind='transceiver', node_id=13)"
        ".values_list('to_state', flat=True))))")))
    assert transitions == ["healthy"]
