"""Django project for the signaling service; importing it loads the Celery app."""

from signaling_site.celery import app as celery_app

__all__ = ["celery_app"]
