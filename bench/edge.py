"""One running ``manage.py up`` shared by the signaling, set-up and capacity benchmarks."""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import redis

from bench.common import BENCH_REDIS_URL
from whip.launch import Edge, start_edge, stop_edge

CAPACITY = 5000  # sessions the transceiver admits (the benchmarks, not admission, set the load:
# the sustained-rate step leaves ~100 unconnected sessions a second for 10 s)
_edge: Edge | None = None
_others: dict[str, Edge] = {}


def edge() -> Edge:
    """Start (once per process) one region, one relay shard, one transceiver on db 12."""
    global _edge
    if _edge is None:
        _edge = _start(BENCH_REDIS_URL, {})
        atexit.register(close)
    return _edge


def other_edge(name: str, extra_env: dict[str, str]) -> Edge:
    """Another edge (once per process and ``name``) with ``extra_env``, on the next Redis db."""
    if name not in _others:
        base, db = BENCH_REDIS_URL.rsplit("/", 1)
        url = f"{base}/{int(db) + 1 + len(_others)}"
        _others[name] = _start(url, extra_env)
        if len(_others) == 1:
            atexit.register(close)
    return _others[name]


def _start(redis_url: str, extra_env: dict[str, str]) -> Edge:
    redis.Redis.from_url(redis_url).flushdb()
    regions = [{"code": "local", "name": "Local", "latitude": 0.0, "longitude": 0.0,
                "default": True, "relays": [{"shard": 1}],
                "transceivers": [{"id": 1, "capacity": CAPACITY}]}]
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    unlimited = {"RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_BURST": "1000000",
                 "MAX_PENDING_PER_CLIENT": "1000000", "TRANSCEIVER_PENDING_SHARE": "1"}
    return start_edge(tmp, redis_url, regions,
                      extra_env={**unlimited, "LOG_LEVEL": "WARNING", **extra_env})


def close() -> None:
    global _edge
    if _edge is not None:
        stop_edge(_edge)
        _edge = None
    while _others:
        stop_edge(_others.popitem()[1])
