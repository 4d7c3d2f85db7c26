from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from geo.topology import RelaySpec, TransceiverSpec, parse_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def region(code: str, shard: int, xcvr: int, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "code": code, "name": code.title(), "latitude": 10.0, "longitude": 20.0,
        "relays": [{"shard": shard, "public_port": 3477 + shard, "internal_port": 4477 + shard}],
        "transceivers": [{"id": xcvr, "port": 5000 + xcvr, "capacity": 10}],
    }
    data.update(extra)
    return data


def test_three_regions_file() -> None:
    topology = parse_topology(json.loads((TOPOLOGIES / "three-regions.json").read_text()))
    assert [r.code for r in topology.regions] == ["eu-west", "us-east", "ap-south"]
    assert topology.default_region.code == "eu-west"
    assert [r.name for r in topology.regions] == ["Dublin", "Virginia", "Mumbai"]
    assert [relay for _, relay in topology.relays] == [
        RelaySpec(1, 3478, 4478, tcp_port=3443), RelaySpec(2, 3479, 4479, tcp_port=3444),
        RelaySpec(3, 3480, 4480, tcp_port=3445),
    ]
    assert [x for _, x in topology.transceivers] == [
        TransceiverSpec(1, 5001, 100), TransceiverSpec(2, 5002, 100), TransceiverSpec(3, 5003, 100)
    ]
    assert [(r.code, x.id) for r, x in topology.transceivers] == [
        ("eu-west", 1), ("us-east", 2), ("ap-south", 3)
    ]


def test_local_file() -> None:
    topology = parse_topology(json.loads((TOPOLOGIES / "local.json").read_text()))
    (only,) = topology.regions
    assert (only.code, only.is_default) == ("local", True)
    assert only.relays == (RelaySpec(1, 3478, 4478, tcp_port=3443),)  # up listens on ICE-TCP too
    assert only.transceivers[0].id == 1 and only.transceivers[0].port == 5001


def test_first_region_becomes_default_when_none_is_marked() -> None:
    topology = parse_topology({"regions": [region("a", 1, 1), region("b", 2, 2)]})
    assert [r.is_default for r in topology.regions] == [True, False]
    assert topology.default_region.code == "a"


def test_marked_default_is_kept() -> None:
    topology = parse_topology({"regions": [region("a", 1, 1), region("b", 2, 2, default=True)]})
    assert topology.default_region.code == "b"
    assert not topology.regions[0].is_default


def test_integer_coordinates_become_floats() -> None:
    topology = parse_topology({"regions": [region("a", 1, 1, latitude=-90, longitude=180)]})
    assert topology.regions[0].latitude == -90.0 and isinstance(topology.regions[0].latitude, float)


def bad(mutate: Any) -> dict[str, Any]:
    data = {"regions": [region("a", 1, 1), region("b", 2, 2)]}
    data = copy.deepcopy(data)
    mutate(data)
    return data


def _set(path: list[Any], value: Any) -> Any:
    def mutate(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(["regions"], []), r"^regions: must be a non-empty list$"),
        (_set(["extra"], 1), r"^topology: unknown key 'extra'$"),
        (_set(["regions", 1, "code"], "a"), r"^duplicate region code 'a'$"),
        (_set(["regions", 1, "code"], "Bad_Code"), r"^regions\[1\]\.code: must match"),
        (_set(["regions", 0, "latitude"], 90.5), r"^regions\[0\]\.latitude: must be -90\.\.90$"),
        (_set(["regions", 0, "longitude"], -181), r"longitude: must be -180\.\.180$"),
        (_set(["regions", 0, "latitude"], "53"), r"latitude: must be a number$"),
        (_set(["regions", 0, "latitude"], True), r"latitude: must be a number$"),
        (_set(["regions", 0, "latitude"], float("nan")), r"latitude: must be -90\.\.90$"),
        (_set(["regions", 0, "longitude"], None), r"^regions\[0\]\.longitude: missing$"),
        (_set(["regions", 0, "name"], ""), r"^regions\[0\]\.name: must be a non-empty string$"),
        (_set(["regions", 0, "default"], "yes"), r"^regions\[0\]\.default: must be true or false"),
        (_set(["regions", 0, "lattitude"], 1.0), r"^regions\[0\]: unknown key 'lattitude'$"),
        (_set(["regions", 0, "relays"], []), r"^regions\[0\]\.relays: must be a non-empty list$"),
        (_set(["regions", 0, "transceivers"], None), r"transceivers: must be a non-empty list$"),
        (_set(["regions", 1, "relays", 0, "shard"], 1), r"^duplicate relay shard 1$"),
        (_set(["regions", 1, "transceivers", 0, "id"], 1), r"^duplicate transceiver id 1$"),
        (_set(["regions", 1, "relays", 0, "public_port"], 3478), r"^duplicate port 3478$"),
        (_set(["regions", 1, "transceivers", 0, "port"], 4478), r"^duplicate port 4478$"),
        (_set(["regions", 0, "relays", 0, "internal_port"], 3478), r"^duplicate port 3478$"),
        (_set(["regions", 0, "relays", 0, "tcp_port"], 0), r"\.tcp_port: must be 1\.\.65535$"),
        (_set(["regions", 0, "relays", 0, "tcp_port"], 3478), None),  # TCP: its own ports
        (lambda d: [_set(["regions", i, "relays", 0, "tcp_port"], 443)(d) for i in (0, 1)],
         r"^duplicate tcp port 443$"),
        (_set(["regions", 0, "relays", 0, "shard"], 0),
         r"^regions\[0\]\.relays\[0\]\.shard: must be 1\.\.65535$"),
        (_set(["regions", 0, "transceivers", 0, "id"], 70000), r"\.id: must be 1\.\.65535$"),
        (_set(["regions", 0, "transceivers", 0, "port"], 3478.0), r"\.port: must be an integer$"),
        (_set(["regions", 0, "transceivers", 0, "capacity"], 0), r"\.capacity: must be 1\.\."),
        (_set(["regions", 0, "relays", 0], "3478"), r"relays\[0\]: must be an object$"),
        (_set(["regions", 0, "default"], True), None),  # control: valid
    ],
)
def test_bad_topologies(mutate: Any, message: str | None) -> None:
    data = bad(mutate)
    if message is None:
        parse_topology(data)
        return
    with pytest.raises(ValueError, match=message):
        parse_topology(data)


def test_two_defaults_rejected() -> None:
    data = {"regions": [region("a", 1, 1, default=True), region("b", 2, 2, default=True)]}
    with pytest.raises(ValueError, match="^more than one default region: a, b$"):
        parse_topology(data)


def test_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="^topology: must be an object$"):
        parse_topology([])  # type: ignore[arg-type]


def test_admin_ports_are_optional_checked_and_unique() -> None:
    plain = parse_topology({"regions": [region("a", 1, 1)]}).regions[0]
    assert plain.relays[0].admin_port == 0 and plain.transceivers[0].admin_port == 0
    data = region("a", 1, 1)
    data["relays"][0]["admin_port"] = 9101
    data["transceivers"][0]["admin_port"] = 9201
    given = parse_topology({"regions": [data]}).regions[0]
    assert (given.relays[0].admin_port, given.transceivers[0].admin_port) == (9101, 9201)
    data["transceivers"][0]["admin_port"] = 9101
    with pytest.raises(ValueError, match="duplicate port 9101"):
        parse_topology({"regions": [data]})
    data["transceivers"][0]["admin_port"] = 70000
    with pytest.raises(ValueError, match=r"admin_port: must be 1\.\.65535"):
        parse_topology({"regions": [data]})
