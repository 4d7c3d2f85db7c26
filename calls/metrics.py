"""Signaling's Prometheus series: offers by outcome and code, steering decisions, answer latency,
sessions by state (read from the database at scrape time).

One registry per signaling process (``signaling_metrics()``); each daphne process exports its
own counters, and Prometheus sums replicas (see README, Metrics).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from calls.models import SessionState
from calls.selectors import session_state_counts
from fleet.metrics import new_registry

logger = logging.getLogger(__name__)

# offer -> answer: ~20 ms on loopback, the control timeout (5 s) at worst; 1 ms .. 2 s covered
OFFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
STEERING_REASONS = ("nearest", "pinned", "default")
FALLBACK_CAUSES = ("no_transceiver", "no_relay", "disabled", "full")  # RegionCapacity.status

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponse]]


def steering_reason(region_reason: str) -> str:
    """The bounded label for an ``X-Region-Reason`` (``fallback:<code>-<status>`` loses the
    region code: the ``region`` label names where the session went)."""
    if region_reason in STEERING_REASONS:
        return region_reason
    if region_reason.startswith("fallback:"):
        for cause in FALLBACK_CAUSES:
            if region_reason.endswith(f"-{cause}"):
                return f"fallback_{cause}"
        return "fallback"
    return "other"


def offer_outcome(response: HttpResponse) -> tuple[str, str]:
    """``(outcome, code)`` of a POST /v1/sessions response: ``answered`` with ``created``, or
    ``refused`` with the problem+json ``code`` (RFC 9457)."""
    if response.status_code == 201:
        return "answered", "created"
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):  # not a JSON object
        code = None
    return "refused", code if isinstance(code, str) and code.isidentifier() else "other"


class SessionStateCollector:
    """``edge_sessions{state}`` from one GROUP BY when scraped; a database that does not
    answer gives ``edge_sessions_query_ok 0`` instead of an error."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        """The families without querying (registration may happen in an async view)."""
        return [GaugeMetricFamily("edge_sessions", "", labels=("state",)),
                GaugeMetricFamily("edge_sessions_query_ok", "")]

    def collect(self) -> Iterable[Metric]:
        ok = GaugeMetricFamily("edge_sessions_query_ok",
                               "1 when the sessions-by-state query answered this scrape")
        try:
            counts = self._counts()
        except DatabaseError as exc:
            logger.warning("metrics: sessions by state unavailable: %s", exc)
            ok.add_metric([], 0)
            return [ok]
        ok.add_metric([], 1)
        sessions = GaugeMetricFamily("edge_sessions", "Sessions in the database, by state",
                                     labels=("state",))
        for state in SessionState:
            sessions.add_metric([state.value], counts.get(state.value, 0))
        return [sessions, ok]


class SignalingMetrics:
    """One signaling process's registry and series."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 counts: Callable[[], Mapping[str, int]] = session_state_counts) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.offers = Counter("edge_offers", "WHIP offers, by outcome (answered, refused) and "
                              "problem code", labelnames=("outcome", "code"),
                              registry=self.registry)
        self.steering = Counter("edge_steering_decisions", "Answered offers, by why their "
                                "region was chosen and the region", labelnames=("reason", "region"),
                                registry=self.registry)
        self.offer_duration = Histogram("edge_offer_duration_seconds", "POST /v1/sessions: "
                                        "request in to answer (or refusal) out",
                                        labelnames=("outcome",), buckets=OFFER_BUCKETS,
                                        registry=self.registry)
        self.registry.register(SessionStateCollector(counts))

    def observe_offer(self, response: HttpResponse, seconds: float) -> None:
        outcome, code = offer_outcome(response)
        self.offers.labels(outcome=outcome, code=code).inc()
        self.offer_duration.labels(outcome=outcome).observe(seconds)
        if outcome == "answered":
            region = response.headers.get("X-Region", "")
            reason = steering_reason(response.headers.get("X-Region-Reason", ""))
            self.steering.labels(reason=reason, region=region).inc()


@functools.cache
def signaling_metrics() -> SignalingMetrics:
    """This process's metrics (created on first use, never at import)."""
    return SignalingMetrics()


def observe_offers(view: AsyncView) -> AsyncView:
    """Count and time each offer the view answers (inside ``api_view``: OPTIONS and 405 are
    not offers)."""

    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        started = time.perf_counter()
        response = await view(request, *args, **kwargs)
        signaling_metrics().observe_offer(response, time.perf_counter() - started)
        return response

    return wrapped
