"""One shared synchronous Redis client for Django code (views run it in worker threads)."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)


def get_redis() -> redis.Redis:
    """The client for ``settings.REDIS_URL`` (re-read so tests can point it elsewhere)."""
    return _client(settings.REDIS_URL)
