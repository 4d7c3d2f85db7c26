"""Write tiny MaxMind-format City databases for tests (reused by end-to-end tests).

Addresses must be public (``is_global``): the locator never looks up private, documentation
or CGNAT ranges, so fixtures use real-world prefixes with made-up places.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


@dataclass(frozen=True, slots=True)
class CityEntry:
    network: str  # CIDR, IPv4 or IPv6
    latitude: float
    longitude: float
    country: str  # ISO 3166-1 alpha-2
    city: str | None = None


# One network per continent, placed at the regions of topologies/three-regions.json.
DUBLIN = CityEntry("81.2.69.0/24", 53.3498, -6.2603, "IE", "Dublin")
ASHBURN = CityEntry("216.160.83.0/24", 39.0438, -77.4874, "US", "Ashburn")
MUMBAI = CityEntry("49.36.0.0/16", 19.0760, 72.8777, "IN", "Mumbai")
DUBLIN_V6 = CityEntry("2a02:8084::/32", 53.3498, -6.2603, "IE", "Dublin")
SAMPLE_ENTRIES = (DUBLIN, ASHBURN, MUMBAI, DUBLIN_V6)
NOT_IN_SAMPLE = "8.8.8.8"  # public, but absent from SAMPLE_ENTRIES


def _record(entry: CityEntry) -> dict[str, Any]:
    record: dict[str, Any] = {
        "location": {"latitude": float(entry.latitude), "longitude": float(entry.longitude)},
        "country": {"iso_code": entry.country, "names": {"en": entry.country}},
    }
    if entry.city is not None:
        record["city"] = {"names": {"en": entry.city}}
    return record


def write_city_db(
    path: Path, entries: Iterable[CityEntry] = SAMPLE_ENTRIES, *,
    database_type: str = "GeoIP2-City",
) -> Path:
    """Write an IPv6 City database (IPv4 at ``::/96``) holding ``entries``; return ``path``."""
    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type=database_type,
        languages=["en"], description="voice-edge test City database",
    )
    for entry in entries:
        writer.insert_network(IPSet([entry.network]), _record(entry))
    writer.to_db_file(str(path))
    return path
