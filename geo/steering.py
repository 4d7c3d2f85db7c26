"""Steer one request: client address -> location -> enabled regions, best first."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from geo.client_address import IPNetwork, client_address, parse_trusted_proxies
from geo.distance import RegionCandidate
from geo.geoip import Location, get_locator
from geo.selectors import regions_ranked


@dataclass(frozen=True, slots=True)
class Steering:
    """Why a request goes where it goes (for headers, logs and tests)."""

    client_ip: str
    location: Location | None
    regions: tuple[RegionCandidate, ...]  # enabled regions, best first; empty: none enabled


@functools.cache
def get_trusted_proxies() -> tuple[IPNetwork, ...]:
    """``settings.TRUSTED_PROXIES`` parsed once; ``ImproperlyConfigured`` on a bad CIDR."""
    try:
        return parse_trusted_proxies(list(settings.TRUSTED_PROXIES))
    except ValueError as exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from None


def steer_client(
    *, peer: str, forwarded_for: str | None, loads: Mapping[str, float] | None = None
) -> Steering:
    """Rank enabled regions for the request's real client (unknown location: default first).

    ``peer`` is the TCP peer host (ASGI ``scope["client"][0]``), ``forwarded_for`` the raw
    X-Forwarded-For header, ``loads`` region code -> 0..1 (see ``distance.load_fraction``).
    """
    ip = client_address(peer, forwarded_for, get_trusted_proxies())
    location = get_locator().locate(ip)
    ranked = regions_ranked(client=location.point if location else None, loads=loads)
    return Steering(client_ip=ip, location=location, regions=tuple(ranked))
