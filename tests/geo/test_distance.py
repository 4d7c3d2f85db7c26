from __future__ import annotations

import math

import pytest

from geo.distance import (
    EARTH_RADIUS_KM,
    LatLon,
    RegionCandidate,
    great_circle_km,
    rank_regions,
)

DUBLIN = LatLon(53.35, -6.26)
MUMBAI = LatLon(19.08, 72.88)
LONDON = LatLon(51.5074, -0.1278)
PARIS = LatLon(48.8566, 2.3522)
NEW_YORK = LatLon(40.7128, -74.0060)
SYDNEY = LatLon(-33.8688, 151.2093)


# Reference distances: Vincenty on the WGS 84 ellipsoid; a sphere stays within 0.5% of them.
# (Dublin-Mumbai is ~7,610 km, not the 7,800 km sometimes quoted.)
@pytest.mark.parametrize(
    ("a", "b", "expected_km"),
    [
        (DUBLIN, MUMBAI, 7_612),
        (LONDON, PARIS, 344),
        (LONDON, NEW_YORK, 5_585),
        (NEW_YORK, SYDNEY, 15_988),
    ],
)
def test_great_circle_known_city_pairs(a: LatLon, b: LatLon, expected_km: float) -> None:
    assert great_circle_km(a, b) == pytest.approx(expected_km, rel=0.01)


def test_great_circle_is_symmetric_and_zero_on_itself() -> None:
    assert great_circle_km(DUBLIN, MUMBAI) == great_circle_km(MUMBAI, DUBLIN)
    assert great_circle_km(DUBLIN, DUBLIN) == 0.0


def test_great_circle_antipodes_and_date_line() -> None:
    assert great_circle_km(LatLon(0, 0), LatLon(0, 180)) == pytest.approx(
        math.pi * EARTH_RADIUS_KM
    )
    assert great_circle_km(LatLon(0, 179.5), LatLon(0, -179.5)) == pytest.approx(111.2, rel=0.01)


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [(91, 0, "latitude"), (-90.5, 0, "latitude"), (0, 181, "longitude"),
     (math.nan, 0, "latitude"), (0, math.inf, "longitude")],
)
def test_latlon_rejects_out_of_range(lat: float, lon: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"{message} out of range"):
        LatLon(lat, lon)


@pytest.mark.parametrize("load", [-0.1, 1.01, math.nan])
def test_candidate_rejects_bad_load(load: float) -> None:
    with pytest.raises(ValueError, match="load out of range"):
        RegionCandidate("x", 0, 0, load=load)


EU = RegionCandidate("eu-west", 53.35, -6.26, load=0.9, is_default=True)
US = RegionCandidate("us-east", 38.95, -77.45, load=0.1)
AP = RegionCandidate("ap-south", 19.08, 72.88, load=0.5)


def codes(ranked: list[RegionCandidate]) -> list[str]:
    return [c.code for c in ranked]


def test_rank_nearest_first_regardless_of_load() -> None:
    assert codes(rank_regions(LONDON, [US, AP, EU])) == ["eu-west", "us-east", "ap-south"]
    assert codes(rank_regions(NEW_YORK, [EU, AP, US])) == ["us-east", "eu-west", "ap-south"]
    assert codes(rank_regions(LatLon(28.61, 77.21), [EU, US, AP])) == [
        "ap-south", "eu-west", "us-east"
    ]


def test_rank_load_breaks_ties_within_tie_distance() -> None:
    busy = RegionCandidate("dub-a", 53.35, -6.26, load=0.8)
    idle = RegionCandidate("dub-b", 53.60, -6.20, load=0.2)  # ~28 km away from dub-a
    assert codes(rank_regions(DUBLIN, [busy, idle])) == ["dub-b", "dub-a"]
    assert codes(rank_regions(DUBLIN, [idle, busy])) == ["dub-b", "dub-a"]


def test_rank_beyond_tie_distance_nearest_wins_even_when_busier() -> None:
    busy = RegionCandidate("dublin", 53.35, -6.26, load=0.95)
    idle = RegionCandidate("london", 51.51, -0.13, load=0.0)  # ~460 km
    assert codes(rank_regions(DUBLIN, [idle, busy])) == ["dublin", "london"]


def test_rank_equal_load_and_distance_is_deterministic_by_code() -> None:
    a = RegionCandidate("b-region", 10, 10)
    b = RegionCandidate("a-region", 10, 10)
    assert codes(rank_regions(LatLon(0, 0), [a, b])) == ["a-region", "b-region"]


def test_rank_without_client_default_then_load_then_code() -> None:
    extra = RegionCandidate("aa-idle", 0, 0, load=0.1)
    assert codes(rank_regions(None, [AP, extra, US, EU])) == [
        "eu-west", "aa-idle", "us-east", "ap-south"
    ]


def test_rank_empty_and_input_untouched() -> None:
    assert rank_regions(DUBLIN, []) == []
    assert rank_regions(None, []) == []
    candidates = [US, EU]
    rank_regions(DUBLIN, candidates)
    assert candidates == [US, EU]
