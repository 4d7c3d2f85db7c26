"""The client-secret sweep run by Celery beat."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="access.client_secrets_sweep", ignore_result=True, time_limit=30)
def client_secrets_sweep_task() -> int:
    """Delete client secrets long expired that created no session (idempotent delete)."""
    from django.conf import settings

    from access.services import client_secrets_delete_expired

    deleted = client_secrets_delete_expired(older_than_seconds=settings.CLIENT_SECRET_KEEP)
    if deleted:
        logger.info("deleted %d expired client secrets", deleted)
    return deleted
