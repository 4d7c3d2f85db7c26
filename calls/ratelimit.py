"""Fixed-window offer rate limit per client address, in Redis (shared by all signaling)."""

from __future__ import annotations

import logging
import time

import redis
from django.conf import settings

from signaling_site.redis_client import get_redis

logger = logging.getLogger(__name__)
WINDOW_SECONDS = 60


def rate_limited(*, client: str) -> bool:
    """Count one offer from ``client``; True when it is over the per-minute limit.

    Fails open: a Redis outage must not stop calls (the transceivers still bound capacity).
    """
    window = int(time.time()) // WINDOW_SECONDS
    key = f"edge:rate:{client}:{window}"
    try:
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        logger.warning("rate limit skipped, redis error: %s", exc)
        return False
    return count > settings.RATE_LIMIT_PER_MINUTE
