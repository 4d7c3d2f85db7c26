"""A real aiortc client through ``manage.py up``: relay, transceiver, echo agent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from django.conf import settings

from fleet.heartbeats import RelayHeartbeat
from fleet.keys import relay_heartbeat_key
from relays import fastpath
from relays.ufrag import mint_ufrag, validate_ufrag
from tests.e2e.conftest import LOCAL, Edge, start_edge, stop_edge
from whip.client import Call, get_json, http_request

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)


def _candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def _keyring(edge: Edge) -> dict[int, bytes]:
    from relays.ufrag import parse_keyring

    secrets_file = json.loads((edge.var_dir / "secrets.json").read_text())
    return parse_keyring(secrets_file["UFRAG_KEYS"])


def _udp_sockets(pid: int) -> list[object]:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return [c for p in procs for c in p.net_connections(kind="udp")]


def _relay_path(edge: Edge) -> str:
    """Which path the edge's relay runs, from its start-up log line."""
    for line in edge.lines:
        if "relay shard" in line and " path" in line:
            return "pure" if "pure-Python path" in line else "fastpath"
    return "unknown"


@pytest.fixture(scope="module")
def pure_relay_edge(tmp_path_factory: pytest.TempPathFactory,
                    redis_dbs: Callable[[], str]) -> Iterator[Edge]:
    """The session's edge again, but with the relay's pure-Python path (RELAY_FASTPATH=0)."""
    running = start_edge(tmp_path_factory.mktemp("edge-pure"), redis_dbs(),
                         json.loads(json.dumps(LOCAL)), extra_env={"RELAY_FASTPATH": "0"})
    yield running
    stop_edge(running)


@pytest.fixture(params=[
    pytest.param("fastpath", marks=pytest.mark.skipif(not fastpath.available(),
                                                      reason="C fast path not built")),
    "pure",
])
def relay_edge(request: pytest.FixtureRequest) -> Edge:
    """The relay tests run on both relay paths."""
    edge: Edge = request.getfixturevalue("edge" if request.param == "fastpath"
                                         else "pure_relay_edge")
    assert _relay_path(edge) == request.param
    return edge


def _relay_counters(edge: Edge, shard: int = 1) -> dict[str, int]:
    import redis

    raw = redis.Redis.from_url(edge.redis_url).get(relay_heartbeat_key(shard, 0))
    assert raw is not None, "relay heartbeat missing"
    return RelayHeartbeat.from_json(raw).counters


async def test_tone_is_echoed_through_the_relay(relay_edge: Edge) -> None:
    edge = relay_edge
    call = Call(edge.base_url, seconds=5.0)
    await call.start()
    try:
        await call.wait_connected()
        await call.play()
        ratio = call.echo_ratio()
        assert call.track.tone_sent >= 240
        assert ratio >= 0.95, f"only {ratio:.1%} of {call.track.tone_sent} tone frames came back"
        state = get_json(call.location)
        assert state["state"] == "connected"
    finally:
        await call.stop()
    await asyncio.sleep(0.3)
    assert get_json(call.location)["state"] == "ended"


async def test_answer_names_only_the_relay_and_a_valid_ufrag(edge: Edge) -> None:
    call = Call(edge.base_url, seconds=0.5)
    await call.start()
    try:
        headers = call.response_headers
        candidates = _candidates(call.answer)
        host, port = edge.relay_public(1)
        assert len(candidates) == 2, candidates  # the relay's UDP port, then its ICE-TCP port
        udp, tcp = (c.split() for c in candidates)
        assert (udp[2], udp[4], int(udp[5]), udp[7]) == ("udp", host, port, "host")
        assert (tcp[2], (tcp[4], int(tcp[5])), tcp[7:]) == (
            "tcp", edge.relay_tcp(1), ["host", "tcptype", "passive"])
        assert headers["Content-Type"] == "application/sdp"
        assert headers["ETag"].startswith('"')
        ufrag = next(line for line in call.answer.splitlines() if line.startswith("a=ice-ufrag:"))
        claims = validate_ufrag(ufrag.split(":", 1)[1], keys=_keyring(edge))
        assert claims.shard == int(headers["X-Relay-Shard"]) == 1
        assert claims.transceiver == int(headers["X-Transceiver"]) == 1
        assert headers["X-Region"] == "local"
        for xcvr in edge.topology["regions"][0]["transceivers"]:
            assert str(xcvr["port"]) not in call.answer  # never a transceiver address
        await call.wait_connected()
    finally:
        await call.stop()


async def test_json_offer_form(edge: Edge) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    body = json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}).encode()
    status, headers, raw = await asyncio.to_thread(
        http_request, "POST", edge.base_url + "/v1/sessions", body,
        {"Content-Type": "application/json"},
    )
    await pc.close()
    assert status == 201, raw
    answer = json.loads(raw)
    assert answer["type"] == "answer" and answer["region"] == "local"
    assert headers["Location"] == f"/v1/sessions/{answer['session_id']}"
    status, _, _ = await asyncio.to_thread(
        http_request, "DELETE", edge.base_url + headers["Location"], b"", {}
    )
    assert status == 200


async def test_ten_sessions_share_one_transceiver_socket(edge: Edge) -> None:
    calls = [Call(edge.base_url, seconds=4.0) for _ in range(10)]
    await asyncio.gather(*(c.start() for c in calls))
    try:
        await asyncio.gather(*(c.wait_connected(15) for c in calls))
        children = edge.children()
        transceiver_udp = _udp_sockets(children["transceiver-1"])
        relay_udp = _udp_sockets(children["relay-1"])
        assert len(transceiver_udp) == 1, transceiver_udp
        assert len(relay_udp) == 2, relay_udp
        await asyncio.gather(*(c.play() for c in calls))
        ratios = [round(c.echo_ratio(), 2) for c in calls]
        assert min(ratios) >= 0.9, ratios
    finally:
        await asyncio.gather(*(c.stop() for c in calls))


def _stun_binding(username: str) -> bytes:
    attr = username.encode()
    pad = b"\0" * (-len(attr) % 4)
    body = struct.pack("!HH", 0x0006, len(attr)) + attr + pad
    return struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, os.urandom(12)) + body


async def test_garbage_is_dropped_and_counted_while_a_call_goes_on(relay_edge: Edge) -> None:
    edge = relay_edge
    call = Call(edge.base_url, seconds=4.0)
    await call.start()
    try:
        await call.wait_connected()
        before = _relay_counters(edge)
        keys = _keyring(edge)
        kid = next(iter(keys))
        good_mac = mint_ufrag(shard=1, transceiver=1, key_id=kid, key=keys[kid], nonce=b"abcd")
        forged = mint_ufrag(shard=1, transceiver=1, key_id=kid, key=b"wrong", nonce=b"abcd")
        other_shard = mint_ufrag(shard=9, transceiver=1, key_id=kid, key=keys[kid], nonce=b"abcd")
        rng = random.Random(7)
        bad = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(200)]
        bad += [_stun_binding(f"{forged}:x"), _stun_binding(f"{other_shard}:x")]
        bad += [_stun_binding(f"{good_mac}:x")[:-4]]  # truncated
        bad += [struct.pack("!HHI12s", 0x0101, 0, 0x2112A442, os.urandom(12))]  # not a request
        relay = edge.relay_public(1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for datagram in bad:
                attacker.sendto(datagram, relay)
            # Frames on the internal port from an address no transceiver registered.
            internal = edge.topology["regions"][0]["relays"][0]["internal_port"]
            attacker.sendto(b"\xe1\x04\x00\x50\x7f\x00\x00\x01hello", ("127.0.0.1", internal))
        await call.play()
        assert call.echo_ratio() >= 0.9
        await asyncio.sleep(settings.HEARTBEAT_INTERVAL * 2)
        after = _relay_counters(edge)
        dropped = {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("drop")}
        assert sum(dropped.values()) >= len(bad), dropped
    finally:
        await call.stop()


async def test_relay_sigkill_mid_call_resumes_without_renegotiation(relay_edge: Edge) -> None:
    edge = relay_edge
    call = Call(edge.base_url, seconds=8.0)
    await call.start()
    try:
        await call.wait_connected()
        await asyncio.sleep(1.5)
        old = edge.children()["relay-1"]
        port = edge.relay_public(1)[1]
        os.kill(old, 9)
        killed_at = time.monotonic()
        listening_at = await _wait_listening(edge, port, old)
        await asyncio.sleep(2.0)
        # Network-level: the first echoed RTP packet reaching the client after the restart.
        resumed = [t for t in call.received.rtp_times if t >= listening_at]
        assert resumed, "no echoed RTP after the relay restarted"
        gap = resumed[0] - listening_at
        logger.info("relay restart: listening %.0f ms after SIGKILL, echo resumed %.1f ms later",
                    (listening_at - killed_at) * 1000, gap * 1000)
        assert gap < 0.2, f"echo resumed {gap * 1000:.0f} ms after the relay listened again"
        # And it plays: decoded tone frames come out of the client's jitter buffer again.
        assert any(t > resumed[0] and ok for t, ok in
                   zip(call.received.times, call.received.tone, strict=True))
        assert call.pc.connectionState == "connected"
        assert listening_at - killed_at < 10
    finally:
        await call.stop()


async def _wait_listening(edge: Edge, port: int, old_pid: int, timeout: float = 15.0) -> float:
    """Monotonic time at which the restarted relay process has its public UDP port bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = edge.children().get("relay-1", old_pid)
            if pid != old_pid:
                procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                if any(c.laddr and c.laddr.port == port
                       for p in procs for c in p.net_connections(kind="udp")):
                    return time.monotonic()
        except (psutil.NoSuchProcess, FileNotFoundError, json.JSONDecodeError):
            pass
        await asyncio.sleep(0.002)
    raise TimeoutError("relay did not come back")
