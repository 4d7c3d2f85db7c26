"""Heartbeat records every daemon publishes (JSON in Redis, with a TTL) and the ONE rule for
whether a heartbeat is fresh enough to believe."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


def is_fresh(sent_at: float, *, now: float, max_age: float) -> bool:
    """A heartbeat sent at ``sent_at`` still describes a live node at ``now`` (wall clock:
    hosts must keep their clocks in sync, e.g. NTP)."""
    return now - sent_at <= max_age


@dataclass(frozen=True)
class TransceiverHeartbeat:
    transceiver_id: int
    bind: str
    pid: int
    sessions: int
    connected: int
    capacity: int
    loop_lag_ms: float
    draining: bool
    sent_at: float
    incarnation: str = ""  # random per process start: a restart is told from a missed beat
    admin: str = ""  # HOST:PORT of its /livez /readyz /metrics endpoint ("" without --admin)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> TransceiverHeartbeat:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RelayHeartbeat:
    shard: int
    worker: int
    public: str
    internal: str
    pid: int
    flows: int
    counters: dict[str, int] = field(default_factory=dict)
    sent_at: float = 0.0
    draining: bool = False
    admin: str = ""  # HOST:PORT of worker 0's /livez /readyz /metrics endpoint ("" without)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> RelayHeartbeat:
        return cls(**json.loads(text))
