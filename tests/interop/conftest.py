"""Independent WebRTC stacks (FFmpeg's WHIP muxer, GStreamer's webrtcbin) calling a real
``manage.py up`` edge: one edge, on a Redis of its own, for the whole directory."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from signaling_site.redis_server import start_embedded_redis
from whip.launch import LOCAL, Edge, start_edge, stop_edge


def host_ipv4() -> str | None:
    """A non-loopback IPv4 address of an interface that is up, or None.

    libnice (GStreamer's ICE) gathers no loopback candidates and pins each socket to its
    interface (``IP_UNICAST_IF``), so a relay on 127.0.0.1 is unreachable for it: the relay
    listens on this host's own address instead (still local delivery, nothing leaves the host).
    """
    stats = psutil.net_if_stats()
    for name, addresses in psutil.net_if_addrs().items():
        if name not in stats or not stats[name].isup:
            continue
        for address in addresses:
            if address.family.name == "AF_INET" and not ipaddress.ip_address(
                address.address
            ).is_loopback:
                return str(address.address)
    return None


@pytest.fixture(scope="session")
def interop_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """One region, one relay on this host's IPv4 (127.0.0.1 if it has none), one transceiver."""
    tmp: Path = tmp_path_factory.mktemp("interop")
    redis_proc, redis_url = start_embedded_redis(tmp / "redis")
    public = host_ipv4() or "127.0.0.1"
    try:
        edge = start_edge(tmp, redis_url, json.loads(json.dumps(LOCAL)),
                          extra_args=["--public-host", public])
    except BaseException:
        redis_proc.terminate()
        raise
    edge.topology["public_host"] = public
    yield edge
    stop_edge(edge)
    redis_proc.terminate()
    redis_proc.wait(timeout=10)


def fresh_heartbeats(edge: Edge, after: float) -> tuple[RelayHeartbeat, TransceiverHeartbeat]:
    """The relay's and the transceiver's first heartbeats sent after ``after`` (wall clock)."""
    client = redis.Redis.from_url(edge.redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        relay_raw = client.get(relay_heartbeat_key(1, 0))
        xcvr_raw = client.get(transceiver_heartbeat_key(1))
        if relay_raw is not None and xcvr_raw is not None:
            relay = RelayHeartbeat.from_json(relay_raw)
            xcvr = TransceiverHeartbeat.from_json(xcvr_raw)
            if relay.sent_at > after and xcvr.sent_at > after:
                return relay, xcvr
        time.sleep(0.1)
    raise AssertionError("no fresh heartbeats within 10 s")
