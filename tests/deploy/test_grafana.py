"""The Grafana dashboard in ``deploy/grafana``: valid JSON, a Prometheus datasource variable, and
only metric names the processes really export (a renamed metric fails here, not on a screen)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from calls.metrics import SignalingMetrics
from relays.config import RelayConfig
from relays.daemon import Relay
from relays.metrics import RelayMetrics
from transceivers.metrics import (
    AudioLoss,
    TransceiverCollector,
    TransceiverMetrics,
    TransceiverSnapshot,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edge-dashboard.json"
METRIC = re.compile(r"\b((?:edge|process)_[a-z0-9_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",), "summary": ("", "_count", "_sum"), "unknown": ("",), "info": ("_info",)}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can export (labelled metrics with no sample yet too)."""
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def every_process_export() -> set[str]:
    signaling = SignalingMetrics(counts=lambda: {"connected": 1}).registry
    relay = RelayMetrics(Relay(RelayConfig(  # not started: its counters are all 0
        shard=1, public=("127.0.0.1", 0), internal=("127.0.0.1", 0), redis_url="redis://x",
        keyring={1: b"k"},
    ))).registry
    transceiver = TransceiverMetrics(2)
    transceiver.registry.register(TransceiverCollector(lambda: TransceiverSnapshot(
        transceiver_id=2, sessions=1, connected=1, capacity=10, draining=False, packets_in=1,
        packets_out=1, send_errors=0, drops={}, audio={"s": {"in": AudioLoss(0, 1)}},
    )))
    return (exported_names(signaling) | exported_names(relay)
            | exported_names(transceiver.registry))


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_dashboard_parses_and_uses_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("expr", queries())
def test_every_queried_metric_is_exported(expr: str) -> None:
    names = METRIC.findall(expr)
    assert names, expr
    assert set(names) <= every_process_export(), expr


def test_the_dashboard_covers_every_edge_metric_family() -> None:
    """Each exported ``edge_`` family appears on some panel, but two: the query health gauge
    and the loss count beside the loss ratio that is shown."""
    queried = {name for expr in queries() for name in METRIC.findall(expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in every_process_export()
                if name.startswith("edge_")}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried}
    unshown = {"edge_sessions_query_ok", "edge_transceiver_session_audio_packets_lost"}
    assert families - shown <= unshown
