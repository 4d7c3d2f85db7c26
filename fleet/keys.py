"""Names of the fleet's shared state in Redis and on the Channels layer (pure: no client).

Redis keys (all under ``edge:``; everything here can be rebuilt: the DB holds what must survive):

- ``edge:transceivers`` hash ``id -> "host:port"``: internal sockets relays may frame to and accept
  frames from. Re-asserted by each transceiver while it runs, removed at clean exit.
- ``edge:hb:transceiver:<id>`` JSON ``TransceiverHeartbeat`` with a TTL.
- ``edge:sessions:transceiver:<id>`` set of the session ids the transceiver holds, rewritten with
  each heartbeat (same TTL; absent with a fresh heartbeat: it holds none). Health reconciles the
  DB with it.
- ``edge:hb:relay:<shard>:<worker>`` JSON ``RelayHeartbeat`` with a TTL.
- ``edge:hb:celery`` the time a Celery worker last ran a beat-scheduled task.
- ``edge:flow:<shard>:<host>:<port>`` -> transceiver id, with a TTL the relay refreshes while
  the flow carries packets; a restarted relay reads it back.
- ``edge:drain:<kind>:<id>`` -> reason: an operator asked this node to drain; the daemon reads it
  with each heartbeat and deletes it when it exits drained.
- ``edge:health:<kind>:<id>`` JSON probe memory written by the health probes.
- ``edge:rebalance:holds`` JSON ``{transceiver id: reason}`` with a TTL.
- ``edge:rate:<client>:<window>`` offers counted per client address (rate limit).
- ``edge:ctl:transceiver:<id>`` list of JSON control requests (offer, close, ping) a
  transceiver pops; ``edge:ctl:reply:<token>`` the one reply to a request. Both expire.
"""

from __future__ import annotations

from fleet.addresses import Addr

TRANSCEIVERS_KEY = "edge:transceivers"
CELERY_HEARTBEAT_KEY = "edge:hb:celery"
REBALANCE_HOLDS_KEY = "edge:rebalance:holds"
FLOW_TTL = 120  # seconds; longer than the relay's idle timeout, refreshed while in use


def transceiver_heartbeat_key(transceiver_id: int) -> str:
    return f"edge:hb:transceiver:{transceiver_id}"


def transceiver_sessions_key(transceiver_id: int) -> str:
    return f"edge:sessions:transceiver:{transceiver_id}"


def relay_heartbeat_key(shard: int, worker: int) -> str:
    return f"edge:hb:relay:{shard}:{worker}"


def drain_key(kind: str, node_id: int) -> str:
    return f"edge:drain:{kind}:{node_id}"


def health_key(kind: str, node_id: int) -> str:
    return f"edge:health:{kind}:{node_id}"


def flow_key(shard: int, client: Addr) -> str:
    return f"edge:flow:{shard}:{client[0]}:{client[1]}"


def rate_key(client: str, window: int) -> str:
    return f"edge:rate:{client}:{window}"


def control_queue_key(transceiver_id: int) -> str:
    """The list a transceiver pops its control requests from (oldest first)."""
    return f"edge:ctl:transceiver:{transceiver_id}"


def control_reply_key(token: str) -> str:
    """The list one control request's reply is pushed to."""
    return f"edge:ctl:reply:{token}"


# Channels layer -------------------------------------------------------------------------------

def session_group(session_id: str) -> str:
    """Channels-layer group that receives a session's events (the page's WebSocket)."""
    return f"session.{session_id}"
