"""Transceivers: aiortc processes, each with one internal UDP socket for all its sessions."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from relays.models import FleetNode
from relays.ufrag import MAX_NODE_ID


class Transceiver(FleetNode):
    transceiver_id = models.PositiveIntegerField(
        unique=True, validators=[MinValueValidator(1), MaxValueValidator(MAX_NODE_ID)]
    )
    region = models.ForeignKey("geo.Region", on_delete=models.PROTECT, related_name="transceivers")
    bind_host = models.GenericIPAddressField()
    bind_port = models.PositiveIntegerField(validators=[MaxValueValidator(65535)])
    capacity = models.PositiveIntegerField(default=200)

    class Meta:
        ordering = ["transceiver_id"]

    def __str__(self) -> str:
        return f"transceiver {self.transceiver_id}"
