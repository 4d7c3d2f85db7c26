"""Fleet nodes: kinds, health states and id bounds (what ufrags, keys and the DB agree on)."""

from __future__ import annotations

from enum import StrEnum

MAX_NODE_ID = 0xFFFF  # relay shards and transceivers: 16 bits in the ufrag
HEALTH_TRANSCEIVER_ID = 0  # reserved: a relay answers Binding requests for it itself (probes)
MAX_RELAY_WORKERS = 16  # SO_REUSEPORT workers per shard (heartbeat keys looked at per shard)


class NodeKind(StrEnum):
    RELAY = "relay"
    TRANSCEIVER = "transceiver"


class NodeState(StrEnum):
    """Health states shared by relay shards and transceivers."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"
    DRAINING = "draining"
    FULL = "full"


# States in which a node may get NEW sessions (with a fresh heartbeat as well). ``unknown`` is a
# node registered but not probed yet (at most one probe interval): admitted on its heartbeat.
ALLOCATABLE_STATES = (NodeState.HEALTHY, NodeState.UNKNOWN)


def transceiver_id_of_pod(base: int, ordinal: str) -> int:
    """A StatefulSet pod's transceiver id: its region's ``base`` plus the pod's ordinal, so a
    restarted pod keeps the id its sessions' ufrags encode."""
    if not ordinal.isdigit():
        raise ValueError("pod ordinal must be a non-negative integer")
    xid = base + int(ordinal)
    if not HEALTH_TRANSCEIVER_ID < xid <= MAX_NODE_ID:
        raise ValueError("transceiver id out of range")
    return xid
