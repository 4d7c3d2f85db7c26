"""The relay's Prometheus series, read at scrape time from the counters its heartbeat carries.

The packet path keeps its plain integer counters (``Demux.counters()``); this collector turns a
snapshot of them into metric families when Prometheus asks, so a scrape costs one dict and the
hot path nothing. Counters with no mapping here fail ``tests/relays/test_metrics.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from fleet.heartbeats import RelayHeartbeat
from fleet.keys import relay_heartbeat_key
from fleet.metrics import new_registry
from fleet.nodes import MAX_RELAY_WORKERS
from relays.actions import DropReason
from relays.config import RelayConfig
from relays.sync import REDIS_ERRORS, RelaySync
from relays.tcpmux import TcpClose, TcpDrop, TcpReject

logger = logging.getLogger(__name__)

LABELS = ("shard", "worker")

HELP = {
    "edge_relay_packets": "Datagrams forwarded (in: client to transceiver, out: transceiver to "
                          "client)",
    "edge_relay_bytes": "Datagram bytes forwarded, by direction (without the relay header)",
    "edge_relay_flows_learned": "Flows learned, by source (stun: a Binding's ufrag; redis: a "
                                "lookup; frame: a transceiver's frame)",
    "edge_relay_flows_removed": "Flows removed, by cause (evicted: the table was full; expired: "
                                "idle)",
    "edge_relay_drops": "Datagrams dropped, by reason",
    "edge_relay_health_probes_answered": "STUN health probes the relay answered itself",
    "edge_relay_registry_repolls": "Early registry polls (a packet named an unknown transceiver)",
    "edge_relay_redis_errors": "Redis calls that failed",
    "edge_relay_tcp_packets": "ICE-TCP packets forwarded (in: client to transceiver, out: back)",
    "edge_relay_tcp_accepted": "ICE-TCP connections accepted",
    "edge_relay_tcp_bound": "ICE-TCP connections bound to a transceiver by a valid Binding",
    "edge_relay_tcp_closes": "ICE-TCP connections closed, by reason",
    "edge_relay_tcp_rejects": "ICE-TCP connections refused at accept, by reason",
    "edge_relay_tcp_drops": "ICE-TCP packets dropped, by reason",
}
GAUGES = {  # heartbeat counter that is a current value -> (gauge, help)
    "tcp_connections": ("edge_relay_tcp_connections", "ICE-TCP connections open now"),
}
# heartbeat counter -> (metric, label, label value): one metric, one series per label value
LABELLED: dict[str, tuple[str, str, str]] = {
    "forwarded_in": ("edge_relay_packets", "direction", "in"),
    "forwarded_out": ("edge_relay_packets", "direction", "out"),
    "forwarded_in_bytes": ("edge_relay_bytes", "direction", "in"),
    "forwarded_out_bytes": ("edge_relay_bytes", "direction", "out"),
    "learned_stun": ("edge_relay_flows_learned", "source", "stun"),
    "learned_redis": ("edge_relay_flows_learned", "source", "redis"),
    "learned_frame": ("edge_relay_flows_learned", "source", "frame"),
    "flows_evicted": ("edge_relay_flows_removed", "cause", "evicted"),
    "flows_expired": ("edge_relay_flows_removed", "cause", "expired"),
    **{f"drop_{r.value}": ("edge_relay_drops", "reason", r.value) for r in DropReason},
    "tcp_forwarded_in": ("edge_relay_tcp_packets", "direction", "in"),
    "tcp_forwarded_out": ("edge_relay_tcp_packets", "direction", "out"),
    **{f"tcp_closed_{r.value}": ("edge_relay_tcp_closes", "reason", r.value) for r in TcpClose},
    **{f"tcp_rejected_{r.value}": ("edge_relay_tcp_rejects", "reason", r.value)
       for r in TcpReject},
    **{f"tcp_drop_{r.value}": ("edge_relay_tcp_drops", "reason", r.value) for r in TcpDrop},
}
PLAIN = {  # heartbeat counter -> metric
    "health_answered": "edge_relay_health_probes_answered",
    "registry_repolls": "edge_relay_registry_repolls",
    "redis_errors": "edge_relay_redis_errors",
    "tcp_accepted": "edge_relay_tcp_accepted",
    "tcp_bound": "edge_relay_tcp_bound",
}


@dataclass(frozen=True, slots=True)
class RelaySnapshot:
    """What one scrape reads from a relay worker."""

    counters: Mapping[str, int]
    flows: int
    draining: bool


def relay_families(shard: int, workers: Mapping[int, RelaySnapshot]) -> list[Metric]:
    """The metric families for a shard's workers' snapshots (pure: tests feed it counters)."""
    counters: dict[str, CounterMetricFamily] = {}
    gauges = {key: GaugeMetricFamily(name, text, labels=LABELS)
              for key, (name, text) in GAUGES.items()}
    flows = GaugeMetricFamily("edge_relay_flows", "Flows in the table now", labels=LABELS)
    draining = GaugeMetricFamily("edge_relay_draining", "1 while the relay drains",
                                 labels=LABELS)
    for worker, snapshot in sorted(workers.items()):
        base = [str(shard), str(worker)]
        for key, value in snapshot.counters.items():
            if key in LABELLED:
                name, label, label_value = LABELLED[key]
                labels: tuple[str, ...] = (*LABELS, label)
                values = [*base, label_value]
            elif key in PLAIN:
                name, labels, values = PLAIN[key], LABELS, base
            elif key in GAUGES:
                gauges[key].add_metric(base, value)
                continue
            else:
                continue
            if name not in counters:
                counters[name] = CounterMetricFamily(name, HELP[name], labels=labels)
            counters[name].add_metric(values, value)
        flows.add_metric(base, snapshot.flows)
        draining.add_metric(base, 1 if snapshot.draining else 0)
    return [*counters.values(), *(g for g in gauges.values() if g.samples), flows, draining]


class RelayView(Protocol):
    """What the metrics read from a running ``relays.daemon.Relay``."""

    config: RelayConfig
    sync: RelaySync | None

    def counters(self) -> dict[str, int]: ...

    @property
    def draining(self) -> bool: ...

    @property
    def flows(self) -> Sized: ...


class RelayMetrics:
    """Worker 0's registry (the one with ``--admin``): its own counters read live, the other
    ``SO_REUSEPORT`` workers' from their heartbeats (one MGET before each scrape, so up to one
    heartbeat interval old)."""

    def __init__(self, relay: RelayView) -> None:
        self.relay = relay
        self.peers: list[RelayHeartbeat] = []
        self.registry = new_registry()
        self.registry.register(self)

    def collect(self) -> Iterable[Metric]:
        relay, cfg = self.relay, self.relay.config
        workers = {beat.worker: RelaySnapshot(beat.counters, beat.flows, beat.draining)
                   for beat in self.peers if beat.shard == cfg.shard}
        workers[cfg.worker] = RelaySnapshot(relay.counters(), len(relay.flows), relay.draining)
        return relay_families(cfg.shard, workers)

    async def refresh(self) -> None:
        """Read the other workers' heartbeats (none when Redis does not answer)."""
        sync, cfg = self.relay.sync, self.relay.config
        if sync is None:
            return
        names = [relay_heartbeat_key(cfg.shard, w) for w in range(MAX_RELAY_WORKERS)
                 if w != cfg.worker]
        try:
            values = await sync.redis.mget(names)
        except REDIS_ERRORS as exc:
            logger.debug("metrics: other workers' heartbeats unavailable: %s", exc)
            values = []
        self.peers = [RelayHeartbeat.from_json(value) for value in values if value]
