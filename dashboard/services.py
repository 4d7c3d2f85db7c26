"""Writes from the dashboard: drain or resume a node (the health checker owns other states)."""

from __future__ import annotations

from typing import Literal

from django.utils import timezone

from relays.models import NodeState, RelayShard
from transceivers.models import Transceiver

NodeKind = Literal["relay", "transceiver"]


def _node(kind: NodeKind, node_id: int) -> RelayShard | Transceiver:
    """The node row (``DoesNotExist`` when unknown)."""
    if kind == "relay":
        return RelayShard.objects.get(shard_id=node_id)
    return Transceiver.objects.get(transceiver_id=node_id)


def node_set_draining(*, kind: NodeKind, node_id: int, draining: bool, reason: str = "") -> bool:
    """Mark a relay shard or transceiver draining (or back to unknown); True when it changed.

    Stored only: a transceiver reads its draining flag from here and stops taking sessions.
    """
    node = _node(kind, node_id)
    target = NodeState.DRAINING if draining else NodeState.UNKNOWN
    if node.state == target or (not draining and node.state != NodeState.DRAINING):
        return False
    node.state = target
    node.state_reason = reason
    node.state_changed_at = timezone.now()
    node.full_clean()
    node.save(update_fields=["state", "state_reason", "state_changed_at"])
    return True
