"""One shared synchronous Redis client per URL (Django code runs it in worker threads)."""

from __future__ import annotations

import functools

import redis


@functools.cache
def shared_redis(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client with short timeouts: a down Redis must fail a request fast, not hang it.

    Request paths with a tighter budget (signaling answers 503 within 1 s) pass a smaller one.
    """
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
