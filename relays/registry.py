"""Names and records of the fleet's shared state in Redis (pure: no client, no clock).

Keys (all under ``edge:``):

- ``edge:transceivers`` hash ``id -> "host:port"``: internal sockets relays may frame to and accept
  frames from. Written by a transceiver at start, removed at clean exit.
- ``edge:hb:transceiver:<id>`` JSON ``TransceiverHeartbeat`` with a TTL.
- ``edge:hb:relay:<shard>:<worker>`` JSON ``RelayHeartbeat`` with a TTL.
- ``edge:flow:<shard>:<host>:<port>`` -> transceiver id, with a TTL the relay refreshes while
  the flow carries packets; a restarted relay reads it back.
- ``edge:drain:<kind>:<id>`` -> reason: an operator asked this node to drain (``manage.py drain``);
  the daemon reads it with each heartbeat and deletes it when it exits drained.
- ``edge:health:<kind>:<id>`` JSON probe memory (last tick, consecutive misses/successes, RTT,
  load) written by the health probes; survives Celery restarts.
- ``edge:rebalance:holds`` JSON ``{transceiver id: reason}`` with a TTL: skewed transceivers that
  get no new sessions until they fall back.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

from relays.framing import Addr

TRANSCEIVERS_KEY = "edge:transceivers"
FLOW_TTL = 120  # seconds; longer than the relay's idle timeout, refreshed while in use


def transceiver_heartbeat_key(transceiver_id: int) -> str:
    return f"edge:hb:transceiver:{transceiver_id}"


def relay_heartbeat_key(shard: int, worker: int) -> str:
    return f"edge:hb:relay:{shard}:{worker}"


def relay_heartbeat_pattern(shard: int | None = None) -> str:
    return f"edge:hb:relay:{'*' if shard is None else shard}:*"


def drain_key(kind: str, node_id: int) -> str:
    return f"edge:drain:{kind}:{node_id}"


def health_key(kind: str, node_id: int) -> str:
    return f"edge:health:{kind}:{node_id}"


REBALANCE_HOLDS_KEY = "edge:rebalance:holds"


def flow_key(shard: int, client: Addr) -> str:
    return f"edge:flow:{shard}:{client[0]}:{client[1]}"


def transceiver_channel(transceiver_id: int) -> str:
    """Channels-layer channel a transceiver receives control requests on."""
    return f"transceiver.{transceiver_id}"


def session_group(session_id: str) -> str:
    """Channels-layer group that receives a session's events (the page's WebSocket)."""
    return f"session.{session_id}"


def format_addr(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def parse_addr(text: str, *, allow_port_zero: bool = False) -> Addr:
    """Parse ``host:port`` (IPv6 bracketed or not: split on the last colon)."""
    host, sep, port = text.rpartition(":")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 0xFFFF:
        raise ValueError("bad address")
    return host.strip("[]"), int(port)


def addr_argument(text: str) -> Addr:
    """argparse ``type`` for the daemons' HOST:PORT options (port 0: the kernel picks)."""
    try:
        return parse_addr(text, allow_port_zero=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: want HOST:PORT") from None


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

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> RelayHeartbeat:
        return cls(**json.loads(text))
