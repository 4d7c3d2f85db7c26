"""Which regions, in which order, may serve this caller (the geo half of signaling)."""

from __future__ import annotations

from calls.errors import UnknownRegion
from geo.geoip import locate_client
from geo.models import Region
from geo.selectors import regions_by_code, regions_ranked
from geo.topology import MAX_CODE_LENGTH, REGION_CODE


def rank_regions_for(*, client_ip: str | None, pinned: str | None) -> list[tuple[Region, str]]:
    """Every region best-first for ``client_ip`` with the reason the first would be chosen.

    Disabled regions stay in the list so that the fallback reason can name them;
    ``UnknownRegion`` when ``pinned`` names no region. The regions come from the process's
    short-lived cache (``geo.selectors.regions_by_code``): no DB round trip per offer.
    """
    regions = regions_by_code()
    if pinned:
        # Not a code at all (a NUL, say, which PostgreSQL refuses in a query): no such region.
        if len(pinned) > MAX_CODE_LENGTH or not REGION_CODE.fullmatch(pinned):
            raise UnknownRegion(f"unknown region {pinned[:40]!r}")
        # Not cached: perhaps created by another process since, so the DB has the last word.
        region = regions.get(pinned) or Region.objects.filter(code=pinned).first()
        if region is None:
            raise UnknownRegion(f"unknown region {pinned!r}")
        return [(region, "pinned")]
    location = locate_client(client_ip)
    ranked = regions_ranked(client=location.point if location else None, regions=regions.values())
    reason = "nearest" if location else "default"
    return [(regions[c.code], reason) for c in ranked]
