"""Reads for health: probe memory, rebalancing holds, a transceiver's live sessions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings

from calls.models import LIVE_STATES, Session
from fleet.keys import REBALANCE_HOLDS_KEY, health_key
from fleet.redis_client import shared_redis
from health.machine import ProbeMemory


def node_memory(*, kind: str, node_id: int) -> ProbeMemory:
    return ProbeMemory.from_json(shared_redis(settings.REDIS_URL).get(health_key(kind, node_id)))


def rebalance_holds_get() -> dict[int, str]:
    """Transceivers held by the rebalancer (empty when the key expired: nothing is held)."""
    raw = shared_redis(settings.REDIS_URL).get(REBALANCE_HOLDS_KEY)
    return {int(k): str(v) for k, v in json.loads(raw).items()} if raw else {}



def sessions_live_ids(
    *, transceiver_id: int, created_before: datetime | None = None,
    among: Iterable[str] | None = None,
) -> set[str]:
    """Ids of a transceiver's live sessions in the DB (created before, or among, the given)."""
    rows = Session.objects.filter(transceiver__transceiver_id=transceiver_id,
                                  state__in=LIVE_STATES)
    if created_before is not None:
        rows = rows.filter(created_at__lt=created_before)
    if among is not None:
        rows = rows.filter(id__in=list(among))
    return {str(sid) for sid in rows.values_list("id", flat=True)}
