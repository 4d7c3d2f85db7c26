"""Geo maths for steering: great-circle distance and region ranking (pure, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius R1
TIE_KM = 50.0  # regions this much farther than the nearest one still count as "as near"


def _check_coordinates(latitude: float, longitude: float) -> None:
    if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
        raise ValueError("latitude out of range")
    if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
        raise ValueError("longitude out of range")


@dataclass(frozen=True, slots=True)
class LatLon:
    """A point on Earth in decimal degrees (WGS 84)."""

    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        _check_coordinates(self.latitude, self.longitude)


@dataclass(frozen=True, slots=True)
class RegionCandidate:
    """A region as ranking sees it: where it is and how busy (0 idle .. 1 full)."""

    code: str
    latitude: float
    longitude: float
    load: float = 0.0
    is_default: bool = False

    def __post_init__(self) -> None:
        _check_coordinates(self.latitude, self.longitude)
        if not (math.isfinite(self.load) and 0.0 <= self.load <= 1.0):
            raise ValueError("load out of range")

    @property
    def point(self) -> LatLon:
        return LatLon(self.latitude, self.longitude)


def great_circle_km(a: LatLon, b: LatLon) -> float:
    """Haversine distance in km on a sphere of radius ``EARTH_RADIUS_KM``."""
    phi1, phi2 = math.radians(a.latitude), math.radians(b.latitude)
    dphi = phi2 - phi1
    dlambda = math.radians(b.longitude - a.longitude)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rank_regions(
    client: LatLon | None, candidates: Sequence[RegionCandidate]
) -> list[RegionCandidate]:
    """Order regions best first: nearest, then least loaded among those within ``TIE_KM``.

    Without a client location: the default region first, then by load, then by code.
    """
    if client is None:
        return sorted(candidates, key=lambda c: (not c.is_default, c.load, c.code))
    by_distance = sorted(
        ((great_circle_km(client, c.point), c) for c in candidates),
        key=lambda dc: (dc[0], dc[1].load, dc[1].code),
    )
    ranked: list[RegionCandidate] = []
    start = 0
    # Greedy bands anchored at the nearest remaining region, so the result is a stable total
    # order (fixed-width buckets would split two regions 1 km apart at a bucket edge).
    while start < len(by_distance):
        anchor = by_distance[start][0]
        end = start
        while end < len(by_distance) and by_distance[end][0] - anchor <= TIE_KM:
            end += 1
        band = sorted(by_distance[start:end], key=lambda dc: (dc[1].load, dc[0], dc[1].code))
        ranked.extend(c for _, c in band)
        start = end
    return ranked
