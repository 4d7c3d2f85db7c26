"""The Celery app; worker and beat both run on it (``celery -A signaling_site``)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")

app = Celery("signaling_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
