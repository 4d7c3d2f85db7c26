from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings

from geo.checks import check_trusted_proxies
from geo.services import region_upsert
from geo.steering import get_trusted_proxies, steer_client
from tests.geo.mmdb import NOT_IN_SAMPLE, write_city_db


@pytest.fixture
def steering_setup(settings: Settings, tmp_path: Path) -> None:
    settings.GEOIP_DATABASE = str(write_city_db(tmp_path / "city.mmdb"))
    settings.TRUSTED_PROXIES = ["127.0.0.0/8", "::1/128"]
    region_upsert(code="eu-west", name="Dublin", latitude=53.35, longitude=-6.26, is_default=True)
    region_upsert(code="us-east", name="Virginia", latitude=38.95, longitude=-77.45)
    region_upsert(code="ap-south", name="Mumbai", latitude=19.08, longitude=72.88)


def codes(*, peer: str, forwarded_for: str | None = None) -> list[str]:
    return [c.code for c in steer_client(peer=peer, forwarded_for=forwarded_for).regions]


@pytest.mark.django_db
@pytest.mark.usefixtures("steering_setup")
def test_each_continent_lands_in_its_region() -> None:
    assert codes(peer="49.36.1.1") == ["ap-south", "eu-west", "us-east"]
    assert codes(peer="216.160.83.56")[0] == "us-east"
    assert codes(peer="2a02:8084::1")[0] == "eu-west"


@pytest.mark.django_db
@pytest.mark.usefixtures("steering_setup")
def test_forwarded_for_only_from_trusted_proxy() -> None:
    behind_proxy = steer_client(peer="127.0.0.1", forwarded_for="81.2.69.1, 49.36.1.1")
    assert behind_proxy.client_ip == "49.36.1.1"
    assert behind_proxy.location is not None and behind_proxy.location.country_iso_code == "IN"
    assert behind_proxy.regions[0].code == "ap-south"
    # An untrusted peer cannot claim to be in Mumbai.
    assert codes(peer="216.160.83.56", forwarded_for="49.36.1.1")[0] == "us-east"


@pytest.mark.django_db
@pytest.mark.usefixtures("steering_setup")
def test_unknown_location_goes_to_default_then_least_loaded() -> None:
    steering = steer_client(peer=NOT_IN_SAMPLE, forwarded_for=None, loads={"us-east": 0.9})
    assert steering.location is None
    assert [c.code for c in steering.regions] == ["eu-west", "ap-south", "us-east"]
    assert codes(peer="127.0.0.1")[0] == "eu-west"


def test_trusted_proxies_from_settings(settings: Settings) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert [str(n) for n in get_trusted_proxies()] == ["10.0.0.0/8"]
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "nonsense"]
    with pytest.raises(ImproperlyConfigured, match="^TRUSTED_PROXIES: bad trusted proxy CIDR"):
        get_trusted_proxies()
    (error,) = check_trusted_proxies()
    assert error.id == "geo.E002"
    settings.TRUSTED_PROXIES = ["::1/128"]
    assert check_trusted_proxies() == []
