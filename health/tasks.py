"""Health tasks run by Celery beat: sweeps fan out one probe (or reconcile) per node; a rebalancer.

Probes are numbered by the beat slot (``tick``) so a duplicate or late run records nothing.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

logger = logging.getLogger(__name__)

PROBE_TIME_LIMIT = 10  # seconds; a probe itself gives up after HEALTH_PROBE_TIMEOUT


@shared_task(name="health.probe_sweep", ignore_result=True, time_limit=PROBE_TIME_LIMIT)
def probe_sweep_task() -> int:
    """Enqueue one probe per relay shard and transceiver for the current beat slot."""
    from django.conf import settings

    from relays.models import RelayShard
    from transceivers.models import Transceiver

    interval = settings.HEALTH_PROBE_INTERVAL
    tick = int(time.time() // interval)
    shards = list(RelayShard.objects.values_list("shard_id", flat=True))
    transceivers = list(Transceiver.objects.values_list("transceiver_id", flat=True))
    for shard_id in shards:
        relay_probe_task.apply_async((shard_id, tick), expires=interval)
    for transceiver_id in transceivers:
        transceiver_probe_task.apply_async((transceiver_id, tick), expires=interval)
    return len(shards) + len(transceivers)


@shared_task(name="health.relay_probe", ignore_result=True, time_limit=PROBE_TIME_LIMIT)
def relay_probe_task(shard_id: int, tick: int) -> str | None:
    from health.services import relay_check

    return relay_check(shard_id=shard_id, tick=tick)


@shared_task(name="health.transceiver_probe", ignore_result=True, time_limit=PROBE_TIME_LIMIT)
def transceiver_probe_task(transceiver_id: int, tick: int) -> str | None:
    from health.services import transceiver_check

    return transceiver_check(transceiver_id=transceiver_id, tick=tick)


@shared_task(name="health.rebalance", ignore_result=True, time_limit=30)
def rebalance_task() -> int:
    from django.conf import settings

    from health.services import rebalance

    interval = settings.HEALTH_REBALANCE_INTERVAL
    return len(rebalance(skew=settings.HEALTH_REBALANCE_SKEW, ttl=3 * interval))


@shared_task(name="health.reconcile_sweep", ignore_result=True, time_limit=PROBE_TIME_LIMIT)
def reconcile_sweep_task() -> int:
    """Enqueue one reconcile per transceiver."""
    from django.conf import settings

    from transceivers.models import Transceiver

    ids = list(Transceiver.objects.values_list("transceiver_id", flat=True))
    for transceiver_id in ids:
        transceiver_reconcile_task.apply_async((transceiver_id,),
                                               expires=settings.HEALTH_RECONCILE_INTERVAL)
    return len(ids)


@shared_task(name="health.transceiver_reconcile", ignore_result=True, time_limit=30)
def transceiver_reconcile_task(transceiver_id: int) -> int:
    from health.services import transceiver_reconcile

    failed, closed = transceiver_reconcile(transceiver_id=transceiver_id)
    return len(failed) + len(closed)
