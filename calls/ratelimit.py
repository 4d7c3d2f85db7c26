"""Offer admission per client in Redis (shared by every signaling replica): a token bucket per
client key, refilled continuously, checked and spent atomically by one Lua script."""

from __future__ import annotations

import functools
import ipaddress
import secrets
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.commands.core import Script

from fleet.redis_client import shared_redis

UNKNOWN_CLIENT = "unknown"
IPV6_CLIENT_PREFIX = 64  # one subscriber gets a /64 (RFC 6177 §2): its addresses are one client
BUCKET_KEY = "edge:bucket:{{{}}}"  # hash tag: a client's two keys share a cluster slot
RECENT_KEY = "edge:recent:{{{}}}"

# KEYS[1] bucket hash {tokens, at}, KEYS[2] sorted set of admitted offers by time; ARGV rate
# (tokens/s), burst, recent window (s), a unique member. Redis' own clock (TIME), so every
# replica agrees. Returns {1 admitted | 0, seconds to wait, offers admitted within the window}.
TOKEN_BUCKET_LUA = """
local rate, burst, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens, allowed = tokens - 1, 1
  redis.call('ZADD', KEYS[2], now, ARGV[4])
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
return {allowed, tostring(wait), redis.call('ZCARD', KEYS[2])}
"""


@dataclass(frozen=True, slots=True)
class Admission:
    wait: float  # 0.0: admitted; else seconds until the client's bucket holds a token again
    recent: int  # offers admitted from the client within the window, this one included


def signaling_redis() -> redis.Redis:
    """The client for a request's first Redis call: a tight timeout, so that a frozen Redis
    fails the request within ``SIGNALING_REDIS_TIMEOUT`` instead of hanging it."""
    return shared_redis(settings.REDIS_URL, timeout=settings.SIGNALING_REDIS_TIMEOUT)


def redis_ping() -> None:
    """``redis.RedisError`` unless Redis answers within the signaling timeout."""
    signaling_redis().ping()


def client_key(client_ip: str | None) -> str:
    """Who is limited: an IPv4 address, or the /64 an IPv6 address belongs to."""
    if not client_ip:
        return UNKNOWN_CLIENT
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


@functools.cache
def _bucket(client: redis.Redis) -> Script:
    return client.register_script(TOKEN_BUCKET_LUA)


def burst_for(per_minute: int) -> int:
    """A bucket's size: ``RATE_LIMIT_BURST`` tokens, never more than a minute's worth."""
    return max(1, min(settings.RATE_LIMIT_BURST, per_minute))


def take_token(*, key: str, per_minute: int, burst: int, window: float) -> Admission:
    """Spend one token of bucket ``key`` (``burst`` tokens, refilled at ``per_minute / 60`` per
    second) and count its admissions of the last ``window`` s. ``redis.RedisError`` when Redis
    does not answer."""
    client = signaling_redis()
    allowed, wait, recent = _bucket(client)(
        keys=[BUCKET_KEY.format(key), RECENT_KEY.format(key)],
        args=[per_minute / 60.0, burst, window, secrets.token_hex(8)], client=client,
    )
    return Admission(0.0 if int(allowed) else float(wait), int(recent))


def admit_offer(*, key: str, window: float) -> Admission:
    """Spend one offer token of client ``key`` and count its offers of the last ``window`` s.

    The bucket holds ``RATE_LIMIT_BURST`` tokens (at most the per-minute rate) and refills at
    ``RATE_LIMIT_PER_MINUTE / 60`` per second. ``redis.RedisError`` when Redis does not answer.
    """
    per_minute = settings.RATE_LIMIT_PER_MINUTE
    return take_token(key=key, per_minute=per_minute, burst=burst_for(per_minute), window=window)
