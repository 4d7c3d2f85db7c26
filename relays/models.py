"""Relay shards: one public UDP address each (served by one or more SO_REUSEPORT workers)."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from relays.ufrag import MAX_NODE_ID


class NodeState(models.TextChoices):
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


class FleetNode(models.Model):
    """What every relay shard and transceiver records about its health (health/ writes it)."""

    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.UNKNOWN)
    state_reason = models.CharField(max_length=200, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True


class RelayShard(FleetNode):
    shard_id = models.PositiveIntegerField(
        unique=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_NODE_ID)]
    )
    region = models.ForeignKey("geo.Region", on_delete=models.PROTECT, related_name="relays")
    public_host = models.GenericIPAddressField()
    public_port = models.PositiveIntegerField(validators=[MaxValueValidator(65535)])
    internal_host = models.GenericIPAddressField()
    internal_port = models.PositiveIntegerField(validators=[MaxValueValidator(65535)])

    class Meta:
        ordering = ["shard_id"]

    def __str__(self) -> str:
        return f"relay {self.shard_id} ({self.public_host}:{self.public_port})"
