"""The Celery app; worker and beat both run on it (``celery -A signaling_site``)."""

from __future__ import annotations

import os
import signal

from celery import Celery
from celery.signals import worker_process_init

from signaling_site.supervisor import set_death_signal

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")

app = Celery("signaling_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _end_with_the_worker(**kwargs: object) -> None:
    """A pool process ends with its worker (which ``up`` ends when it dies), not seconds later
    when it notices."""
    set_death_signal(signal.SIGKILL, parent=os.getppid())
