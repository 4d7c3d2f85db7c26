"""Topology files for ``manage.py up --topology FILE``: regions, relay shards, transceivers.

Pure: the caller reads the JSON; this module validates it into frozen values. Every port in a
topology must be distinct because ``up`` runs the whole topology on one machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fleet.nodes import MAX_NODE_ID

REGION_CODE = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # same rule as geo.models.Region.code
MAX_CODE_LENGTH = 32
MAX_NAME_LENGTH = 100

_TOP_KEYS = frozenset({"regions"})
_REGION_KEYS = frozenset(
    {"code", "name", "latitude", "longitude", "default", "relays", "transceivers"}
)
_RELAY_KEYS = frozenset({"shard", "public_port", "internal_port", "tcp_port", "admin_port"})
_TRANSCEIVER_KEYS = frozenset({"id", "port", "capacity", "admin_port"})


@dataclass(frozen=True, slots=True)
class RelaySpec:
    shard: int
    public_port: int
    internal_port: int
    admin_port: int = 0  # TCP /livez /readyz /metrics; 0: any free port (see its heartbeat)
    tcp_port: int | None = None  # ICE-TCP listener on the public host (RFC 6544 passive)


@dataclass(frozen=True, slots=True)
class TransceiverSpec:
    id: int
    port: int
    capacity: int
    admin_port: int = 0  # TCP /livez /readyz /metrics; 0: any free port (see its heartbeat)


@dataclass(frozen=True, slots=True)
class RegionSpec:
    code: str
    name: str
    latitude: float
    longitude: float
    is_default: bool
    relays: tuple[RelaySpec, ...]
    transceivers: tuple[TransceiverSpec, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    regions: tuple[RegionSpec, ...]

    @property
    def default_region(self) -> RegionSpec:
        return next(region for region in self.regions if region.is_default)

    @property
    def relays(self) -> tuple[tuple[RegionSpec, RelaySpec], ...]:
        return tuple((region, relay) for region in self.regions for relay in region.relays)

    @property
    def transceivers(self) -> tuple[tuple[RegionSpec, TransceiverSpec], ...]:
        return tuple((r, t) for r in self.regions for t in r.transceivers)


def _mapping(value: object, where: str, keys: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be an object")
    unknown = sorted(str(key) for key in value if key not in keys)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    return value


def _list(value: object, where: str) -> Sequence[object]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where}: must be a non-empty list")
    return value


def _int(data: Mapping[str, object], key: str, where: str, low: int, high: int) -> int:
    value = data.get(key)
    if value is None:
        raise ValueError(f"{where}.{key}: missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}.{key}: must be an integer")
    if not low <= value <= high:
        raise ValueError(f"{where}.{key}: must be {low}..{high}")
    return value


def _admin_port(data: Mapping[str, object], where: str) -> int:
    """The optional ``admin_port`` (0 when absent)."""
    return _int(data, "admin_port", where, 1, 65535) if "admin_port" in data else 0


def _degrees(data: Mapping[str, object], key: str, where: str, limit: float) -> float:
    value = data.get(key)
    if value is None:
        raise ValueError(f"{where}.{key}: missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key}: must be a number")
    if not (math.isfinite(value) and -limit <= value <= limit):
        raise ValueError(f"{where}.{key}: must be -{limit:g}..{limit:g}")
    return float(value)


def _text(data: Mapping[str, object], key: str, where: str, max_length: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}.{key}: must be a non-empty string")
    if len(value) > max_length:
        raise ValueError(f"{where}.{key}: longer than {max_length}")
    return value


def _relay(value: object, where: str) -> RelaySpec:
    data = _mapping(value, where, _RELAY_KEYS)
    return RelaySpec(
        shard=_int(data, "shard", where, 1, MAX_NODE_ID),
        public_port=_int(data, "public_port", where, 1, 65535),
        internal_port=_int(data, "internal_port", where, 1, 65535),
        admin_port=_admin_port(data, where),
        tcp_port=_int(data, "tcp_port", where, 1, 65535) if "tcp_port" in data else None,
    )


def _transceiver(value: object, where: str) -> TransceiverSpec:
    data = _mapping(value, where, _TRANSCEIVER_KEYS)
    return TransceiverSpec(
        id=_int(data, "id", where, 1, MAX_NODE_ID),  # 0 is the relays' health-probe id
        port=_int(data, "port", where, 1, 65535),
        capacity=_int(data, "capacity", where, 1, 1_000_000),
        admin_port=_admin_port(data, where),
    )


def _region(value: object, where: str) -> RegionSpec:
    data = _mapping(value, where, _REGION_KEYS)
    code = _text(data, "code", where, MAX_CODE_LENGTH)
    if not REGION_CODE.match(code):
        raise ValueError(f"{where}.code: must match {REGION_CODE.pattern}")
    is_default = data.get("default", False)
    if not isinstance(is_default, bool):
        raise ValueError(f"{where}.default: must be true or false")
    relays = _list(data.get("relays"), f"{where}.relays")
    transceivers = _list(data.get("transceivers"), f"{where}.transceivers")
    return RegionSpec(
        code=code,
        name=_text(data, "name", where, MAX_NAME_LENGTH),
        latitude=_degrees(data, "latitude", where, 90.0),
        longitude=_degrees(data, "longitude", where, 180.0),
        is_default=is_default,
        relays=tuple(_relay(r, f"{where}.relays[{i}]") for i, r in enumerate(relays)),
        transceivers=tuple(
            _transceiver(t, f"{where}.transceivers[{i}]") for i, t in enumerate(transceivers)
        ),
    )


def _check_unique(regions: Sequence[RegionSpec]) -> None:
    codes: set[str] = set()
    shards: set[int] = set()
    transceivers: set[int] = set()
    ports: set[int] = set()
    tcp_ports: set[int] = set()

    def claim(seen: set[int], value: int, message: str) -> None:
        if value in seen:
            raise ValueError(message)
        seen.add(value)

    for region in regions:
        if region.code in codes:
            raise ValueError(f"duplicate region code {region.code!r}")
        codes.add(region.code)
        for relay in region.relays:
            claim(shards, relay.shard, f"duplicate relay shard {relay.shard}")
            claim(ports, relay.public_port, f"duplicate port {relay.public_port}")
            claim(ports, relay.internal_port, f"duplicate port {relay.internal_port}")
            if relay.admin_port:
                claim(ports, relay.admin_port, f"duplicate port {relay.admin_port}")
            if relay.tcp_port is not None:
                claim(tcp_ports, relay.tcp_port, f"duplicate tcp port {relay.tcp_port}")
        for xcvr in region.transceivers:
            claim(transceivers, xcvr.id, f"duplicate transceiver id {xcvr.id}")
            claim(ports, xcvr.port, f"duplicate port {xcvr.port}")
            if xcvr.admin_port:
                claim(ports, xcvr.admin_port, f"duplicate port {xcvr.admin_port}")


def parse_topology(data: Mapping[str, object]) -> Topology:
    """Validate a decoded topology; ``ValueError`` names the first bad field.

    No region marked ``"default": true`` makes the first region the default; two is an error.
    """
    top = _mapping(data, "topology", _TOP_KEYS)
    raw_regions = _list(top.get("regions"), "regions")
    regions = [_region(r, f"regions[{i}]") for i, r in enumerate(raw_regions)]
    _check_unique(regions)
    defaults = [region.code for region in regions if region.is_default]
    if len(defaults) > 1:
        raise ValueError(f"more than one default region: {', '.join(defaults)}")
    if not defaults:
        regions[0] = replace(regions[0], is_default=True)
    return Topology(regions=tuple(regions))
