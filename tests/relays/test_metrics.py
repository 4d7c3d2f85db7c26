"""The relay's Prometheus series: read from the core's counters at scrape time."""

from __future__ import annotations

import socket

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fleet.heartbeats import RelayHeartbeat
from fleet.keys import relay_heartbeat_key
from fleet.metrics import exposition
from relays.actions import DropReason
from relays.daemon import Relay
from relays.demux import Demux, DemuxConfig
from relays.metrics import GAUGES, LABELLED, PLAIN, RelaySnapshot, relay_families
from tests.fleet.test_admin_http import get
from tests.relays.conftest import KEYS, SHARD
from tests.relays.test_daemon import client, establish, make_config, transceiver

__all__ = ["client", "transceiver"]  # the loopback fixtures of test_daemon


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = exposition(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset({"shard": str(SHARD), "worker": "0", **kv}.items())


class _Families:
    def __init__(self, workers: dict[int, RelaySnapshot]) -> None:
        self.workers = workers

    def collect(self) -> list[Metric]:
        return relay_families(SHARD, self.workers)


def families_registry(workers: dict[int, RelaySnapshot]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_Families(workers))
    return registry


def test_every_heartbeat_counter_has_a_metric() -> None:
    """A counter added to the core without a metric here fails this test."""
    core = Demux(DemuxConfig(shard=SHARD, keyring=KEYS))
    unmapped = set(core.counters()) | {"redis_errors"}
    assert unmapped - set(LABELLED) - set(PLAIN) - set(GAUGES) == set()


def test_core_counters_become_labelled_series() -> None:
    core = Demux(DemuxConfig(shard=SHARD, keyring=KEYS))
    core.on_datagram(("192.0.2.1", 5000), b"", 0.0)  # empty: dropped
    core.on_datagram(("192.0.2.1", 5000), b"\x01\x01" + b"\x00" * 18, 0.0)  # STUN, not Binding
    core.forwarded_in, core.forwarded_out = 7, 5
    core.forwarded_in_bytes, core.forwarded_out_bytes = 1400, 1000
    got = samples(families_registry({
        0: RelaySnapshot({**core.counters(), "redis_errors": 2}, len(core.flows), True),
        1: RelaySnapshot({"forwarded_in": 3}, 4, False),
    }))
    assert got[("edge_relay_packets_total", labels(direction="in"))] == 7
    assert got[("edge_relay_packets_total", labels(direction="out"))] == 5
    assert got[("edge_relay_drops_total", labels(reason="empty"))] == 1
    assert got[("edge_relay_drops_total", labels(reason="stun_not_binding"))] == 1
    assert got[("edge_relay_drops_total", labels(reason="bad_ufrag"))] == 0
    assert got[("edge_relay_flows_learned_total", labels(source="stun"))] == 0
    assert got[("edge_relay_redis_errors_total", labels())] == 2
    assert got[("edge_relay_flows", labels())] == 0
    assert got[("edge_relay_draining", labels())] == 1
    assert got[("edge_relay_packets_total", labels(direction="in", worker="1"))] == 3
    assert got[("edge_relay_flows", labels(worker="1"))] == 4
    drops = {k for k in got if k[0] == "edge_relay_drops_total" and ("worker", "0") in k[1]}
    assert len(drops) == len(DropReason)  # every reason, even at 0: rate() needs the series
    assert got[("edge_relay_bytes_total", labels(direction="in"))] == 1400
    assert got[("edge_relay_bytes_total", labels(direction="out"))] == 1000


async def test_admin_metrics_count_a_flow_and_the_other_workers(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    config = make_config(redis_url, admin=("127.0.0.1", 0))
    peer = RelayHeartbeat(shard=SHARD, worker=2, public="x", internal="y", pid=1, flows=5,
                          counters={"forwarded_in": 11, "drop_bad_ufrag": 1})
    redis_client.set(relay_heartbeat_key(SHARD, 2), peer.to_json(), px=5000)
    async with Relay(config) as relay:
        await establish(relay, client, transceiver)
        assert relay._admin is not None
        port = relay._admin.sockets[0].getsockname()[1]
        assert relay.sync is not None and relay.sync.admin == f"127.0.0.1:{port}"
        status, _, body = await get(port, "/metrics")
        assert status == "HTTP/1.0 200 OK"
        got = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
        assert got[("edge_relay_packets_total", labels(direction="in"))] == 1
        assert got[("edge_relay_flows_learned_total", labels(source="stun"))] == 1
        assert got[("edge_relay_flows", labels())] == 1
        assert any(name == "process_cpu_seconds_total" for name, _ in got)
        # worker 2 (another SO_REUSEPORT process) from its heartbeat
        assert got[("edge_relay_packets_total", labels(direction="in", worker="2"))] == 11
        assert got[("edge_relay_drops_total", labels(reason="bad_ufrag", worker="2"))] == 1
        assert got[("edge_relay_flows", labels(worker="2"))] == 5
