"""Reads on transceivers: what a running transceiver says it holds (Redis)."""

from __future__ import annotations

from django.conf import settings

from fleet.heartbeats import TransceiverHeartbeat, is_fresh
from fleet.keys import transceiver_heartbeat_key, transceiver_sessions_key
from fleet.redis_client import shared_redis


def transceiver_sessions_held(
    *, transceiver_id: int, now: float, max_age: float
) -> set[str] | None:
    """Session ids the transceiver wrote with its last heartbeat; None without a fresh one."""
    pipe = shared_redis(settings.REDIS_URL).pipeline(transaction=True)
    pipe.get(transceiver_heartbeat_key(transceiver_id))
    pipe.smembers(transceiver_sessions_key(transceiver_id))
    raw, members = pipe.execute()
    if raw is None:
        return None
    beat = TransceiverHeartbeat.from_json(raw)
    if not is_fresh(beat.sent_at, now=now, max_age=max_age):
        return None
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
