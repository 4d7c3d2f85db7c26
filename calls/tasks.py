"""Session sweeps run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="calls.sessions_sweep", ignore_result=True, time_limit=30)
def sessions_sweep_task() -> int:
    """Fail sessions that never connected within the connect timeout (idempotent update)."""
    from django.conf import settings

    from calls.services import SWEEP_GRACE_SECONDS, sessions_fail_unconnected

    # Transceivers close such sessions themselves; this catches a transceiver that died first.
    failed = sessions_fail_unconnected(
        older_than_seconds=settings.SESSION_CONNECT_TIMEOUT + SWEEP_GRACE_SECONDS
    )
    if failed:
        logger.info("failed %d sessions that never connected", failed)
    return failed
