"""Writes on transceivers."""

from __future__ import annotations

from django.db import transaction

from geo.selectors import region_by_code
from transceivers.models import Transceiver


@transaction.atomic
def transceiver_register(
    *, transceiver_id: int, region_code: str, bind_host: str, bind_port: int, capacity: int
) -> Transceiver:
    """Create or update the row of a starting transceiver (``Region.DoesNotExist`` if unknown)."""
    region = region_by_code(code=region_code)
    row = Transceiver.objects.filter(transceiver_id=transceiver_id).first()
    row = row or Transceiver(transceiver_id=transceiver_id)
    row.region, row.bind_host, row.bind_port, row.capacity = region, bind_host, bind_port, capacity
    row.full_clean()
    row.save()
    return row
