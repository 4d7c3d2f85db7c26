"""Writes on relay shards."""

from __future__ import annotations

from django.db import transaction

from geo.selectors import region_by_code
from relays.models import RelayShard


@transaction.atomic
def relay_register(
    *, shard_id: int, region_code: str, public_host: str, public_port: int, internal_host: str,
    internal_port: int, tcp_port: int | None = None,
) -> RelayShard:
    """Create or update the row of relay shard ``shard_id``; ``Region.DoesNotExist`` if unknown."""
    region = region_by_code(code=region_code)
    relay = RelayShard.objects.filter(shard_id=shard_id).first() or RelayShard(shard_id=shard_id)
    relay.region = region
    relay.public_host, relay.public_port = public_host, public_port
    relay.internal_host, relay.internal_port = internal_host, internal_port
    relay.tcp_port = tcp_port
    relay.full_clean()
    relay.save()
    return relay
