"""Reads on regions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.db.models import QuerySet

from geo.distance import LatLon, RegionCandidate, rank_regions
from geo.models import Region


def region_by_code(*, code: str) -> Region:
    """Return the region ``code``; ``Region.DoesNotExist`` when unknown."""
    return Region.objects.get(code=code)


def regions_enabled() -> QuerySet[Region]:
    """Regions that may receive sessions, by code."""
    return Region.objects.filter(enabled=True).order_by("code")


def region_candidates(
    *, loads: Mapping[str, float] | None = None, regions: Iterable[Region] | None = None
) -> list[RegionCandidate]:
    """``regions`` (default: the enabled ones) as ranking input; ``loads`` maps code -> 0..1
    (missing: idle)."""
    loads = loads or {}
    return [
        RegionCandidate(
            code=region.code,
            latitude=region.latitude,
            longitude=region.longitude,
            load=loads.get(region.code, 0.0),
            is_default=region.is_default,
        )
        for region in (regions_enabled() if regions is None else regions)
    ]


def regions_ranked(
    *, client: LatLon | None, loads: Mapping[str, float] | None = None,
    regions: Iterable[Region] | None = None,
) -> list[RegionCandidate]:
    """``regions`` (default: the enabled ones) best first for a client at ``client``
    (``None``: location unknown)."""
    return rank_regions(client, region_candidates(loads=loads, regions=regions))
