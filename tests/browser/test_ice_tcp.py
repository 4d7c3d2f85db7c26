"""ICE-TCP with a real browser: headless Chromium in a network namespace of its own whose UDP to
the relay is dropped (nftables) connects through the relay's TCP candidate and hears the echo;
with UDP allowed the same call selects UDP. Root only (namespaces); names start with ``tcpt-``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Edge, start_edge, stop_edge
from whip.client import http_request

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

logger = logging.getLogger(__name__)
CALL_SECONDS = 6.0
_N = os.getpid() % 200 + 20
NETNS = f"tcpt-{os.getpid()}"
VETH_HOST, VETH_NS = f"tcpt-h{_N}", f"tcpt-n{_N}"
HOST_IP, NS_IP = f"10.251.{_N}.1", f"10.251.{_N}.2"


def _sh(*argv: str, stdin: str | None = None, check: bool = True) -> None:
    subprocess.run(argv, input=stdin, text=True, capture_output=True, check=check)


def _in_ns(*argv: str, stdin: str | None = None) -> None:
    _sh("ip", "netns", "exec", NETNS, *argv, stdin=stdin)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A namespace linked to this host by one veth pair: ``NS_IP`` there, ``HOST_IP`` here."""
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        _sh("ip", "link", "set", VETH_NS, "netns", NETNS)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", VETH_HOST)
        _sh("ip", "link", "set", VETH_HOST, "up")
        _in_ns("ip", "addr", "add", f"{NS_IP}/30", "dev", VETH_NS)
        _in_ns("ip", "link", "set", VETH_NS, "up")
        _in_ns("ip", "link", "set", "lo", "up")
        yield NETNS
    finally:
        _sh("ip", "link", "del", VETH_HOST, check=False)
        _sh("ip", "netns", "del", NETNS, check=False)


@pytest.fixture(scope="module")
def tcp_edge(
    netns: str, tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    """``manage.py up`` whose relay listens (UDP and TCP) on the host end of the veth."""
    regions = [{"code": "local", "name": "Local", "latitude": 0.0, "longitude": 0.0,
                "default": True, "relays": [{"shard": 1}], "transceivers": [{"id": 1}]}]
    edge = start_edge(tmp_path_factory.mktemp("tcp-edge"), redis_dbs(), regions,
                      extra_args=["--public-host", HOST_IP])
    yield edge
    stop_edge(edge)


def _block_udp(block: bool) -> None:
    """Drop (or stop dropping) every UDP datagram the namespace sends to the relay's host."""
    _sh("ip", "netns", "exec", NETNS, "nft", "delete", "table", "inet", "tcpt", check=False)
    if block:
        _in_ns("nft", "-f", "-", stdin=(
            "table inet tcpt {\n chain out {\n  type filter hook output priority 0;\n"
            f"  ip daddr {HOST_IP} meta l4proto udp counter drop\n }}\n}}\n"
        ))


def _call(edge: Edge, seconds: float = CALL_SECONDS,
          during: Callable[[], None] | None = None) -> tuple[str, dict[str, Any]]:
    """One Chromium call from the namespace: its answer SDP and its stats; ``during`` runs
    once the answer is in."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-m", "tests.browser.netns_call",
         str(seconds)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"browser script failed: {proc.communicate(timeout=10)[1]}")
        offer = json.loads(line)["offer"]
        status, _, body = http_request("POST", edge.base_url + "/v1/sessions", offer.encode(),
                                       {"Content-Type": "application/sdp"})
        assert status == 201, body
        answer = body.decode()
        proc.stdin.write(json.dumps({"answer": answer}) + "\n")
        proc.stdin.flush()
        if during is not None:
            during()
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    results = [json.loads(x) for x in out.splitlines() if x.startswith('{"result"')]
    assert results, err[-2000:]
    logger.info("chromium call: %s", {k: v for k, v in results[0]["result"].items()
                                      if k != "series"})
    return answer, results[0]["result"]


def _candidates(answer: str) -> list[list[str]]:
    return [line.split() for line in answer.splitlines() if line.startswith("a=candidate:")]


@pytest.fixture(scope="module")
def udp_call(tcp_edge: Edge) -> tuple[str, dict[str, Any]]:
    _block_udp(False)
    return _call(tcp_edge)


def test_answer_lists_udp_then_tcp_passive_with_udp_preferred(
    tcp_edge: Edge, udp_call: tuple[str, dict[str, Any]]
) -> None:
    udp, tcp = _candidates(udp_call[0])
    tcp_port = tcp_edge.topology["regions"][0]["relays"][0]["tcp_port"]
    assert (udp[2], udp[4]) == ("udp", HOST_IP)
    assert (tcp[2], tcp[4], int(tcp[5]), tcp[6:]) == (
        "tcp", HOST_IP, tcp_port, ["typ", "host", "tcptype", "passive"])
    assert int(udp[3]) > int(tcp[3])


def test_with_udp_allowed_the_selected_pair_is_udp(udp_call: tuple[str, dict[str, Any]]) -> None:
    result = udp_call[1]
    assert result["state"] == "connected", result
    assert result["local"]["protocol"] == "udp" and result["remote"]["protocol"] == "udp", result
    assert result["packets"] >= CALL_SECONDS * 50 * 0.8, result  # 20 ms Opus frames


def test_udp_blocked_connects_over_tcp_and_hears_the_echo(
    tcp_edge: Edge, udp_call: tuple[str, dict[str, Any]]
) -> None:
    _block_udp(True)
    try:
        _, result = _call(tcp_edge)
    finally:
        _block_udp(False)
    assert result["state"] == "connected", (result, _relay_counters(tcp_edge))
    assert result["local"]["protocol"] == "tcp" and result["remote"]["protocol"] == "tcp", result
    assert result["remote"]["port"] == tcp_edge.topology["regions"][0]["relays"][0]["tcp_port"]
    assert result["packets"] >= 0.95 * udp_call[1]["packets"], (result, udp_call[1])
    beats = _relay_counters(tcp_edge)
    assert beats["tcp_bound"] >= 1 and beats["tcp_forwarded_out"] > 0, beats


def _relay_counters(edge: Edge) -> dict[str, int]:
    import redis

    from fleet import keys
    from fleet.heartbeats import RelayHeartbeat

    raw = redis.Redis.from_url(edge.redis_url).get(keys.relay_heartbeat_key(1, 0))
    assert raw is not None
    return RelayHeartbeat.from_json(raw).counters



def test_relay_restart_ends_tcp_calls(tcp_edge: Edge) -> None:
    """TCP connections die with the relay process; what Chromium does next is measured."""
    killed: list[float] = []

    def kill_relay() -> None:
        time.sleep(4.0)
        os.kill(tcp_edge.children()["relay-1"], signal.SIGKILL)
        killed.append(time.monotonic())

    _block_udp(True)
    try:
        _, result = _call(tcp_edge, 30.0, kill_relay)
    finally:
        _block_udp(False)
    series = result["series"]
    stall = next(i for i in range(1, len(series)) if all(
        series[j][1] == series[i - 1][1] for j in range(i, min(i + 5, len(series)))))
    stalled_at = series[stall - 1][0]  # the last 100 ms sample that still gained packets
    resumed = [t for t, packets, _ in series[stall:] if packets > series[stall][1]]
    first = {state: t for t, _, state in reversed(series)}
    counters = _relay_counters(tcp_edge)
    logger.info("relay killed: audio stopped at %s ms, disconnected at %s ms, failed at %s ms, "
                "resumed %s; restarted relay: %s", stalled_at, first.get("disconnected"),
                first.get("failed"), resumed[:1],
                {k: v for k, v in counters.items() if k.startswith("tcp_") and v})
    # TCP connections die with the process and Chromium does not bring the call back over a
    # new one: the call fails and the caller has to make a new offer.
    assert not resumed and result["state"] == "failed", result["state"]
    assert "disconnected" in first and first["failed"] - stalled_at < 30_000
