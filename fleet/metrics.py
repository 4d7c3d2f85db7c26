"""Prometheus plumbing every process shares: one registry per daemon, the exposition format.

Each daemon (relay worker, transceiver, signaling process) builds its own ``CollectorRegistry``
instead of using ``prometheus_client.REGISTRY``, so two daemons in one test process never share
or leak series. Counters the daemons already keep are read at scrape time by custom collectors:
nothing is added to the packet path.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Prometheus text format


def new_registry() -> CollectorRegistry:
    """A registry for one process, with the standard ``process_*``, ``python_*`` series."""
    disable_created_metrics()  # no ``*_created`` series beside each counter and histogram
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's current samples in the Prometheus text format."""
    return generate_latest(registry)
