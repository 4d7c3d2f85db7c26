"""History of node health: every state change of a relay shard or transceiver."""

from __future__ import annotations

from django.db import models

from relays.models import NodeState


class NodeKind(models.TextChoices):
    RELAY = "relay"
    TRANSCEIVER = "transceiver"


class NodeTransition(models.Model):
    kind = models.CharField(max_length=16, choices=NodeKind.choices)
    node_id = models.PositiveIntegerField()
    from_state = models.CharField(max_length=16, choices=NodeState.choices)
    to_state = models.CharField(max_length=16, choices=NodeState.choices)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["kind", "node_id", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.node_id}: {self.from_state} -> {self.to_state}"
