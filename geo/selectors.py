"""Reads on regions."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from time import monotonic

from django.db import transaction
from django.db.models import QuerySet

from geo.distance import LatLon, RegionCandidate, rank_regions
from geo.models import Region


def region_by_code(*, code: str) -> Region:
    """Return the region ``code``; ``Region.DoesNotExist`` when unknown."""
    return Region.objects.get(code=code)


def regions_enabled() -> QuerySet[Region]:
    """Regions that may receive sessions, by code."""
    return Region.objects.filter(enabled=True).order_by("code")


# Steering reads every region on every offer; regions change rarely (admin, topology load, the
# ``region`` command, the dashboard's switch), so each process keeps them this long. A write in
# this process clears its copy at once (``regions_cache_clear``: the model's signals and the
# services' bulk updates); another process's write is seen within this many seconds.
REGIONS_CACHE_TTL = 1.0


@dataclass(frozen=True)
class _Cached:
    regions: dict[str, Region]
    expires: float  # monotonic()


_cache_lock = threading.Lock()
_cached: _Cached | None = None
_generation = 0  # bumped by every clear, so that a read begun before it is not stored


def regions_cache_clear() -> None:
    """Forget the cached regions now and again when the current transaction commits (a reader
    in between would otherwise cache what the transaction has not committed yet)."""
    global _cached, _generation
    with _cache_lock:
        _cached, _generation = None, _generation + 1
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(regions_cache_clear)


def regions_by_code() -> dict[str, Region]:
    """Every region (enabled or not) by code, read from the DB at most once per
    ``REGIONS_CACHE_TTL`` in this process: an offer's steering costs no DB round trip. Each call
    gets its own copies of the rows, so a caller that changes one changes nobody else's."""
    global _cached
    now, cached = monotonic(), _cached
    if cached is None or now >= cached.expires:
        with _cache_lock:
            generation = _generation
        read = {r.code: r for r in Region.objects.all()}
        cached = _Cached(read, now + REGIONS_CACHE_TTL)
        with _cache_lock:
            if generation == _generation:  # no write since the read began
                _cached = cached
    return {code: copy.copy(region) for code, region in cached.regions.items()}


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
