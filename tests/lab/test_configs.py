"""Configuration text generated for nftables, HAProxy and the fleet's processes."""

from __future__ import annotations

from lab.configs import (
    Secrets,
    block_ruleset,
    geo_records,
    haproxy_config,
    load_balancer_ruleset,
    nat_ruleset,
    secret_data,
    wan_filter_ruleset,
)
from lab.plan import build_plan

SECRETS = Secrets("k" * 50, "1:" + "u" * 40, "pw")


def test_nat_ruleset_masquerades_the_public_side() -> None:
    text = nat_ruleset("eth0")
    assert "type nat hook postrouting priority srcnat" in text
    assert 'oifname "eth0" masquerade' in text
    assert "to :" not in text


def test_a_rebinding_nat_maps_udp_and_tcp_to_new_ports_and_still_masquerades_the_rest() -> None:
    lines = [line.strip() for line in nat_ruleset("eth0", ports="40000-40999").splitlines()]
    ranged = 'oifname "eth0" meta l4proto { tcp, udp } masquerade to :40000-40999'
    assert lines.index(ranged) < lines.index('oifname "eth0" masquerade')


def test_block_ruleset_drops_only_the_hosts_own_traffic_to_one_service() -> None:
    text = block_ruleset("10.0.0.10", 6379)
    assert "hook output" in text
    assert "ip daddr 10.0.0.10 tcp dport 6379 drop" in text


def test_haproxy_balances_both_signaling_hosts_on_the_public_address() -> None:
    text = haproxy_config(build_plan())
    assert "bind 198.18.0.10:80" in text
    assert "option forwardfor" in text
    assert "server sig-1 10.0.0.21:8000 check" in text
    assert "server sig-2 10.0.0.22:8000 check" in text
    assert "uri /healthz" in text and "hdr Host 198.18.0.10" in text
    assert "option redispatch 1" in text


def test_the_lab_secret_has_the_example_secrets_keys() -> None:
    from deploy.validate import example_secrets

    data = secret_data(build_plan(), SECRETS)
    assert data["DATABASE_URL"] == "postgres://edge:pw@10.0.0.10:5432/edge"
    assert data["REDIS_URL"] == "redis://10.0.0.10:6379/0"
    assert data["UFRAG_KEYS"] == SECRETS.ufrag_keys
    assert set(data) == set(example_secrets()["edge-secrets"])


def test_geo_records_place_each_client_prefix() -> None:
    records = {r.network: r for r in geo_records(build_plan())}
    assert records["81.2.69.0/24"].country == "FR"
    assert records["49.36.0.0/24"].city == "Singapore"


def test_wan_filter_keeps_callers_out_of_the_backbone() -> None:
    text = wan_filter_ruleset(build_plan())
    assert "hook forward" in text
    callers = "{ 81.2.69.0/24, 216.160.83.0/24, 49.36.0.0/24 }"
    assert f"ip saddr {callers} ip daddr 10.0.0.0/8 drop" in text


def test_the_relay_hosts_load_balancer_dnats_its_public_port_to_the_pod() -> None:
    text = load_balancer_ruleset("198.18.2.10", "10.2.0.10", 3478)
    assert "hook prerouting priority dstnat" in text
    assert "ip daddr 198.18.2.10 udp dport 3478 dnat to 10.2.0.10:3478" in text
