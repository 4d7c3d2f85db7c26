"""Which regions, in which order, may serve a caller (the geo half of signaling)."""

from __future__ import annotations

from django.http import HttpRequest

from geo.client_address import client_address
from geo.geoip import Location, get_locator
from geo.models import Region
from geo.selectors import regions_ranked
from geo.steering import get_trusted_proxies


class SteeringError(ValueError):
    """The request names a region that does not exist."""


def client_ip_of(request: HttpRequest) -> str | None:
    """The caller's address: the TCP peer, or X-Forwarded-For behind a trusted proxy."""
    peer = request.META.get("REMOTE_ADDR") or ""
    if not peer:
        return None
    return client_address(peer, request.headers.get("X-Forwarded-For"), get_trusted_proxies())


def locate_client(client_ip: str | None) -> Location | None:
    """Where the caller is, or None for private, unknown or missing addresses."""
    return get_locator().locate(client_ip) if client_ip else None


def rank_regions_for(*, client_ip: str | None, pinned: str | None) -> list[tuple[Region, str]]:
    """Every region best-first for ``client_ip`` with the reason the first would be chosen.

    Disabled regions stay in the list so that the fallback reason can name them.
    """
    if pinned:
        region = Region.objects.filter(code=pinned).first()
        if region is None:
            raise SteeringError(f"unknown region {pinned!r}")
        return [(region, "pinned")]
    regions = {r.code: r for r in Region.objects.all()}
    location = locate_client(client_ip)
    ranked = regions_ranked(client=location.point if location else None, regions=regions.values())
    reason = "nearest" if location else "default"
    return [(regions[c.code], reason) for c in ranked]
