from __future__ import annotations

import pytest

from geo.distance import LatLon
from geo.selectors import region_candidates, regions_enabled, regions_ranked
from geo.services import region_upsert

pytestmark = pytest.mark.django_db

LONDON = LatLon(51.5074, -0.1278)


@pytest.fixture
def three_regions() -> None:
    region_upsert(code="eu-west", name="Dublin", latitude=53.35, longitude=-6.26, is_default=True)
    region_upsert(code="us-east", name="Virginia", latitude=38.95, longitude=-77.45)
    region_upsert(code="ap-south", name="Mumbai", latitude=19.08, longitude=72.88)
    region_upsert(code="off", name="Disabled", latitude=51.5, longitude=-0.1, enabled=False)


@pytest.mark.usefixtures("three_regions")
def test_regions_enabled_skips_disabled() -> None:
    assert [r.code for r in regions_enabled()] == ["ap-south", "eu-west", "us-east"]


@pytest.mark.usefixtures("three_regions")
def test_region_candidates_carry_loads_and_default() -> None:
    candidates = {c.code: c for c in region_candidates(loads={"us-east": 0.5})}
    assert set(candidates) == {"ap-south", "eu-west", "us-east"}
    assert candidates["us-east"].load == 0.5
    assert candidates["ap-south"].load == 0.0
    assert candidates["eu-west"].is_default and not candidates["us-east"].is_default
    assert (candidates["eu-west"].latitude, candidates["eu-west"].longitude) == (53.35, -6.26)


@pytest.mark.usefixtures("three_regions")
def test_regions_ranked_nearest_enabled_first() -> None:
    # "off" sits in London but is disabled.
    assert [c.code for c in regions_ranked(client=LONDON)] == ["eu-west", "us-east", "ap-south"]


@pytest.mark.usefixtures("three_regions")
def test_regions_ranked_unknown_client_prefers_default_then_load() -> None:
    ranked = regions_ranked(client=None, loads={"eu-west": 1.0, "us-east": 0.7})
    assert [c.code for c in ranked] == ["eu-west", "ap-south", "us-east"]


def test_no_regions_ranks_nothing() -> None:
    assert regions_ranked(client=LONDON) == []
