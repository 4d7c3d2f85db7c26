"""The lab's pure address plan, delay matrix and contract file."""

from __future__ import annotations

import ipaddress
import json

import pytest

from lab.plan import (
    PREFIX,
    Role,
    build_plan,
    delay_config_json,
    delays_ms,
    lab_json,
    nearest_region,
    one_way_ms,
    private_address,
    public_address,
    regions_by_distance,
)

CONTRACT_ROLES = {"client", "relay", "transceiver", "signaling", "lb", "core", "router", "worker"}


def test_one_way_matrix_is_symmetric_and_as_configured() -> None:
    assert one_way_ms("eu", "eu") == 5.0
    assert one_way_ms("eu", "na") == one_way_ms("na", "eu") == 40.0
    assert one_way_ms("eu", "asia") == 60.0
    assert one_way_ms("asia", "na") == 90.0
    with pytest.raises(ValueError, match="no delay between"):
        one_way_ms("eu", "mars")


def test_every_continent_steers_to_its_own_region() -> None:
    plan = build_plan()
    expected = {"eu": "eu-west", "na": "us-east", "asia": "ap-south"}
    for site in plan.clients:
        assert nearest_region(site).code == expected[site.continent]
        assert regions_by_distance(site)[0].code == expected[site.continent]
    for client in plan.by_role(Role.CLIENT):
        assert client.expected_region == expected[client.continent or ""]


def test_hosts_have_unique_names_and_addresses_and_the_lab_prefix() -> None:
    plan = build_plan()
    names = [h.name for h in plan.hosts]
    assert len(names) == len(set(names))
    assert all(ns.startswith(PREFIX) for ns in plan.namespaces)
    routed = [a for h in plan.hosts for a in h.addresses if not a.startswith("192.168.")]
    assert len(routed) == len(set(routed))
    assert len(plan.by_role(Role.SIGNALING)) == 2
    assert len(plan.by_role(Role.RELAY)) == 3
    assert len(plan.by_role(Role.TRANSCEIVER)) == 6
    assert len(plan.by_role(Role.CLIENT)) == 3


def test_interface_names_fit_the_kernel_limit() -> None:
    plan = build_plan()
    names = [v.ifname for v in plan.veths] + [v.peer for v in plan.veths]
    names += [s.name for s in plan.segments]
    assert all(len(name) <= 15 for name in names)
    wan_side = [v.peer for v in plan.veths if v.peer_ns == PREFIX + "wan"] + [
        s.name for s in plan.segments]
    assert len(wan_side) == len(set(wan_side))


def test_every_veth_address_is_inside_its_segment() -> None:
    plan = build_plan()
    segments = {s.name: ipaddress.ip_network(s.network) for s in plan.segments}
    for veth in plan.veths:
        if veth.bridge is not None:
            assert ipaddress.ip_interface(veth.address).ip in segments[veth.bridge]


def test_public_and_private_addresses() -> None:
    plan = build_plan()
    assert public_address(plan, "relay-eu-west") == "198.18.1.10"
    assert private_address(plan, "relay-eu-west") == "10.1.0.10"
    assert private_address(plan, "core") == "10.0.0.10"
    with pytest.raises(ValueError, match="no backbone address"):
        private_address(plan, "client-eu")
    with pytest.raises(ValueError, match="no host"):
        plan.host("nope")


def test_client_public_prefixes_are_global_and_relays_are_benchmark_addresses() -> None:
    """The GeoIP locator ignores non-global addresses, so only the NAT prefixes are global."""
    plan = build_plan()
    for site in plan.clients:
        assert ipaddress.ip_network(site.network).is_global
    bench = ipaddress.ip_network("198.18.0.0/15")
    for relay in plan.by_role(Role.RELAY):
        assert ipaddress.ip_address(public_address(plan, relay.name)) in bench


def test_lab_json_contract() -> None:
    data = json.loads(json.dumps(lab_json(build_plan())))
    assert data["signaling_url"] == "http://198.18.0.10:80"
    assert data["regions"] == ["eu-west", "us-east", "ap-south"]
    assert data["delays_ms"]["asia"] == {"eu-west": 60.0, "us-east": 90.0, "ap-south": 5.0}
    for host in data["hosts"]:
        assert {"name", "netns", "role", "addresses"} <= set(host)
        assert host["role"] in CONTRACT_ROLES
        if host["role"] == "client":
            assert host["continent"] in data["delays_ms"]
            assert host["expected_region"] in data["regions"]
    assert {h["role"] for h in data["hosts"]} == CONTRACT_ROLES


def test_delays_ms_and_delay_config_cover_every_pair() -> None:
    plan = build_plan()
    assert delays_ms(plan)["na"]["eu-west"] == 40.0
    config = delay_config_json(plan, loss=0.01)
    pairs = {frozenset((a, b)): ms for a, b, ms in config["one_way_ms"]}
    assert pairs[frozenset({"na", "asia"})] == 90.0
    assert pairs[frozenset({"eu"})] == 5.0
    assert len(pairs) == 6
    assert config["loss"] == 0.01


def test_nothing_is_plugged_into_the_root_namespace() -> None:
    """Every link has both ends in lab namespaces: no path leads out of the lab."""
    plan = build_plan()
    for veth in plan.veths:
        assert veth.netns.startswith(PREFIX) and veth.peer_ns.startswith(PREFIX)
    assert all(r.netns.startswith(PREFIX) for r in plan.routes)
