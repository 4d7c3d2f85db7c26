"""Transceivers: aiortc processes, each with one internal UDP socket for all its sessions."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from fleet.nodes import MAX_NODE_ID
from relays.models import FleetNode


class Transceiver(FleetNode):
    transceiver_id = models.PositiveIntegerField(
        unique=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_NODE_ID)]
    )
    region = models.ForeignKey("geo.Region", on_delete=models.PROTECT, related_name="transceivers")
    bind_host = models.GenericIPAddressField()
    bind_port = models.PositiveIntegerField(validators=[MaxValueValidator(65535)])
    capacity = models.PositiveIntegerField(default=200)
    # The daemon process the health checker last saw (heartbeat incarnation); health owns it.
    incarnation = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["transceiver_id"]

    def __str__(self) -> str:
        return f"transceiver {self.transceiver_id}"
