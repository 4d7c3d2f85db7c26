"""Relay shards: one public UDP address each (served by one or more SO_REUSEPORT workers)."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from fleet.addresses import format_addr
from fleet.nodes import MAX_NODE_ID, NodeState

NODE_STATE_CHOICES = [(state.value, state.name.title()) for state in NodeState]


class FleetNode(models.Model):
    """What every relay shard and transceiver records about its health (health/ writes it)."""

    state = models.CharField(max_length=16, choices=NODE_STATE_CHOICES, default=NodeState.UNKNOWN)
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
    # ICE-TCP (RFC 6544 passive) port on ``public_host``; null: the shard has no TCP listener
    tcp_port = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )

    class Meta:
        ordering = ["shard_id"]

    def __str__(self) -> str:
        return f"relay {self.shard_id} ({format_addr((self.public_host, self.public_port))})"
