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


def _with_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis for this test session, flushed at start; settings point at it."""
    proc = None
    url = _with_db(settings.REDIS_URL, TEST_REDIS_DB)
    if not redis_reachable(url):
        proc, base = start_embedded_redis(Path(tmp_path_factory.mktemp("redis")))
        url = _with_db(base, TEST_REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    settings.REDIS_URL = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [url]
    settings.CELERY_BROKER_URL = url
    os.environ["REDIS_URL"] = url  # daemons started by tests inherit it
    yield url
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
