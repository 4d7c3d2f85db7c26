"""Write the lab's own GeoIP City database (MaxMind format) placing each client NAT prefix."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from lab.configs import GeoRecord


def write_city_db(path: Path, records: Iterable[GeoRecord]) -> Path:
    """An IPv6 City database (IPv4 under ``::/96``) the geoip2 City reader accepts."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                        languages=["en"], description="voice-edge lab City database")
    for record in records:
        writer.insert_network(IPSet([record.network]), {
            "location": {"latitude": record.latitude, "longitude": record.longitude},
            "country": {"iso_code": record.country, "names": {"en": record.country}},
            "city": {"names": {"en": record.city}},
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path
