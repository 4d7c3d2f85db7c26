"""Steering one request: client address -> location -> regions best first, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import RequestFactory
from pytest_django.fixtures import Settings

from calls.errors import UnknownRegion
from calls.steering import rank_regions_for
from geo.client_ip import client_ip_of
from geo.geoip import locate_client
from geo.selectors import regions_ranked
from geo.services import region_upsert
from tests.geo.mmdb import NOT_IN_SAMPLE, write_city_db

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def steering_setup(settings: Settings, tmp_path: Path) -> None:
    settings.GEOIP_DATABASE = str(write_city_db(tmp_path / "city.mmdb"))
    settings.TRUSTED_PROXIES = ["127.0.0.0/8", "::1/128"]
    region_upsert(code="eu-west", name="Dublin", latitude=53.35, longitude=-6.26, is_default=True)
    region_upsert(code="us-east", name="Virginia", latitude=38.95, longitude=-77.45)
    region_upsert(code="ap-south", name="Mumbai", latitude=19.08, longitude=72.88)


def ranked(*, peer: str, forwarded_for: str | None = None) -> list[tuple[str, str]]:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for else {}
    request = RequestFactory().post("/v1/sessions", REMOTE_ADDR=peer, **headers)
    return [(r.code, why) for r, why in rank_regions_for(client_ip=client_ip_of(request),
                                                         pinned=None)]


def codes(*, peer: str, forwarded_for: str | None = None) -> list[str]:
    return [code for code, _ in ranked(peer=peer, forwarded_for=forwarded_for)]


def test_each_continent_lands_in_its_region() -> None:
    assert codes(peer="49.36.1.1") == ["ap-south", "eu-west", "us-east"]
    assert codes(peer="216.160.83.56")[0] == "us-east"
    assert codes(peer="2a02:8084::1")[0] == "eu-west"
    assert ranked(peer="49.36.1.1")[0] == ("ap-south", "nearest")


def test_forwarded_for_only_from_trusted_proxy() -> None:
    assert codes(peer="127.0.0.1", forwarded_for="81.2.69.1, 49.36.1.1")[0] == "ap-south"
    location = locate_client("49.36.1.1")
    assert location is not None and location.country_iso_code == "IN"
    # An untrusted peer cannot claim to be in Mumbai.
    assert codes(peer="216.160.83.56", forwarded_for="49.36.1.1")[0] == "us-east"


def test_unknown_location_goes_to_default_then_least_loaded() -> None:
    assert locate_client(NOT_IN_SAMPLE) is None
    loaded = regions_ranked(client=None, loads={"us-east": 0.9})
    assert [c.code for c in loaded] == ["eu-west", "ap-south", "us-east"]
    assert ranked(peer="127.0.0.1")[0] == ("eu-west", "default")


def test_pinned_region_and_unknown_pin() -> None:
    assert [(r.code, why) for r, why in rank_regions_for(client_ip=None, pinned="us-east")] == [
        ("us-east", "pinned")
    ]
    with pytest.raises(UnknownRegion, match="unknown region 'nowhere'"):
        rank_regions_for(client_ip=None, pinned="nowhere")


@pytest.mark.parametrize("pin", ["EU-WEST", "eu west", "eu-west\n", "nul\x00", "x" * 33, "-eu"])
def test_a_pin_that_cannot_be_a_region_code_is_unknown_before_any_query(pin: str) -> None:
    """Not a code (geo.topology.REGION_CODE): refused as unknown without asking the database
    (PostgreSQL cannot even hold a NUL in a query parameter: that was a 500)."""
    with pytest.raises(UnknownRegion, match="unknown region"):
        rank_regions_for(client_ip=None, pinned=pin)
