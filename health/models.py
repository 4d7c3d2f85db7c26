"""History of node health: every state change of a relay shard or transceiver."""

from __future__ import annotations

from django.db import models

from fleet.nodes import NodeKind
from relays.models import NODE_STATE_CHOICES


class NodeTransition(models.Model):
    kind = models.CharField(
        max_length=16, choices=[(kind.value, kind.name.title()) for kind in NodeKind]
    )
    node_id = models.PositiveIntegerField()
    from_state = models.CharField(max_length=16, choices=NODE_STATE_CHOICES)
    to_state = models.CharField(max_length=16, choices=NODE_STATE_CHOICES)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["kind", "node_id", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.node_id}: {self.from_state} -> {self.to_state}"
