"""Run the whole system with ``manage.py up`` (real Redis, relay, transceiver, Celery, daphne)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.conftest import with_db
from whip.client import Call, WhipError
from whip.launch import (  # noqa: F401  (re-exported: the e2e and browser tests use them)
    LOCAL,
    ROOT,
    Edge,
    free_port,
    make_topology,
    start_edge,
    stop_edge,
)

E2E_REDIS_DBS = range(1, 15)  # db 15 is the unit tests'


@pytest.fixture(scope="session")
def redis_dbs(redis_server: str) -> Callable[[], str]:
    """Hands out a fresh, flushed Redis db per running system, so two edges alive at once
    (the session's and a module's) never share a registry or heartbeats."""
    numbers = iter(E2E_REDIS_DBS)

    def next_url() -> str:
        url = with_db(redis_server, next(numbers))
        redis.Redis.from_url(url).flushdb()
        return url

    return next_url


@pytest.fixture(scope="session")
def e2e_redis_url(redis_dbs: Callable[[], str]) -> str:
    """The Redis db of the session's shared edge."""
    return redis_dbs()


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory, e2e_redis_url: str) -> Iterator[Edge]:
    """The whole system with one region, one relay shard, one transceiver."""
    regions = json.loads(json.dumps(LOCAL))
    # Every test calls from 127.0.0.1, one places 10 calls at once: the defaults (a burst of
    # 10 offers, 4 unconnected per client) are for strangers, not for the test suite.
    running = start_edge(tmp_path_factory.mktemp("edge"), e2e_redis_url, regions,
                         extra_env={"MAX_PENDING_PER_CLIENT": "16", "RATE_LIMIT_BURST": "100",
                                    "RATE_LIMIT_PER_MINUTE": "6000"})
    yield running
    stop_edge(running)


async def placed_call(edge: Edge, *, seconds: float, region: str | None = None,
                      wait: float) -> Call:
    """A started call; 503s are retried for ``wait`` s (a node probed between its registration
    and its first heartbeat, or restarted by an earlier test, is not allocatable at once)."""
    deadline = time.monotonic() + wait
    while True:
        call = Call(edge.base_url, seconds=seconds, region=region)
        try:
            await call.start()
            return call
        except WhipError as exc:
            await call.pc.close()
            if exc.status != 503 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)
