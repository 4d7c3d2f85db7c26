"""One running ``manage.py up`` shared by the signaling, set-up and capacity benchmarks."""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import redis

from bench.common import BENCH_REDIS_URL
from tests.e2e.conftest import Edge, start_edge, stop_edge

CAPACITY = 1000  # sessions the transceiver admits (the benchmarks, not admission, set the load)
_edge: Edge | None = None


def edge() -> Edge:
    """Start (once per process) one region, one relay shard, one transceiver on db 12."""
    global _edge
    if _edge is None:
        redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
        regions = [{"code": "local", "name": "Local", "latitude": 0.0, "longitude": 0.0,
                    "default": True, "relays": [{"shard": 1}],
                    "transceivers": [{"id": 1, "capacity": CAPACITY}]}]
        tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
        _edge = start_edge(tmp, BENCH_REDIS_URL, regions,
                           extra_env={"RATE_LIMIT_PER_MINUTE": "1000000", "LOG_LEVEL": "WARNING"})
        atexit.register(close)
    return _edge


def close() -> None:
    global _edge
    if _edge is not None:
        stop_edge(_edge)
        _edge = None
