"""Celery liveness: beat schedules it, a worker runs it, ``manage.py up`` waits for it."""

from __future__ import annotations

import time

from celery import shared_task


@shared_task(name="edge.celery_heartbeat", ignore_result=True, time_limit=10)
def celery_heartbeat_task() -> None:
    """Write the time a worker last ran a beat-scheduled task (idempotent: a plain SET)."""
    from django.conf import settings

    from fleet.keys import CELERY_HEARTBEAT_KEY
    from fleet.redis_client import shared_redis

    shared_redis(settings.REDIS_URL).set(CELERY_HEARTBEAT_KEY, str(time.time()), ex=60)
