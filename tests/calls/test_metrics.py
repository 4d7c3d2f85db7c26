"""Signaling's metrics: offers by outcome and code, steering labels, sessions by state, and the
``/metrics`` endpoint (open, or Bearer ``METRICS_TOKEN``; never a 5xx)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from django.db import DatabaseError, OperationalError
from django.http import HttpResponse
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from calls.metrics import (
    SessionStateCollector,
    SignalingMetrics,
    offer_outcome,
    signaling_metrics,
    steering_reason,
)
from calls.models import SessionState
from calls.problems import problem
from calls.selectors import session_state_counts
from geo.services import region_ensure_default
from signaling_site.views import metrics_authorized
from tests.dashboard.fleet import make_nodes, make_region, make_session

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


@pytest.mark.parametrize(("given", "label"), [
    ("nearest", "nearest"), ("pinned", "pinned"), ("default", "default"),
    ("fallback:us-east-full", "fallback_full"),
    ("fallback:eu-west-2-no_transceiver", "fallback_no_transceiver"),
    ("fallback:x-no_relay", "fallback_no_relay"), ("fallback:x-disabled", "fallback_disabled"),
    ("fallback:x-weird", "fallback"), ("", "other"), ("nearest; drop table", "other"),
])
def test_steering_reason_labels_are_bounded(given: str, label: str) -> None:
    assert steering_reason(given) == label


def test_offer_outcome_reads_the_problem_code() -> None:
    assert offer_outcome(HttpResponse(status=201)) == ("answered", "created")
    assert offer_outcome(problem(429, "slow down", code="rate_limited")) == ("refused",
                                                                              "rate_limited")
    assert offer_outcome(HttpResponse(b"<html>", status=500)) == ("refused", "other")
    assert offer_outcome(HttpResponse(b'{"code": "a b"}', status=400)) == ("refused", "other")


@pytest.mark.django_db
def test_sessions_by_state_in_one_query(django_assert_num_queries: object) -> None:
    relay, xcvr = make_nodes(make_region("eu-west", default=True), 1)
    for state in (SessionState.ANSWERED, SessionState.ANSWERED, SessionState.CONNECTED):
        make_session(relay, xcvr, state=state)
    metrics = SignalingMetrics()
    with django_assert_num_queries(1):  # type: ignore[operator]
        got = parse(_exposition(metrics))
    assert got[("edge_sessions", labels(state="answered"))] == 2
    assert got[("edge_sessions", labels(state="connected"))] == 1
    assert got[("edge_sessions", labels(state="failed"))] == 0
    assert got[("edge_sessions_query_ok", labels())] == 1
    assert session_state_counts() == {"answered": 2, "connected": 1}


async def test_metrics_can_be_created_in_an_async_view() -> None:
    """Registration describes the sessions collector without a query (an offer's async view
    creates the process's metrics on first use; Django forbids queries there)."""
    metrics = SignalingMetrics(counts=session_state_counts)  # raised SynchronousOnlyOperation
    metrics.offers.labels(outcome="answered", code="created").inc()


def test_a_database_that_does_not_answer_is_a_gauge_not_an_error() -> None:
    def down() -> Mapping[str, int]:
        raise OperationalError("database is locked")

    got = list(SessionStateCollector(down).collect())
    assert [(m.name, [s.value for s in m.samples]) for m in got] == [
        ("edge_sessions_query_ok", [0])
    ]
    assert issubclass(OperationalError, DatabaseError)


def _exposition(metrics: SignalingMetrics) -> str:
    from fleet.metrics import exposition

    return exposition(metrics.registry).decode()


def _offers(got: Samples, outcome: str, code: str) -> float:
    return got.get(("edge_offers_total", labels(outcome=outcome, code=code)), 0.0)


@pytest.mark.django_db
def test_refused_offers_are_counted_and_timed(client: Client, redis_client: object) -> None:
    region_ensure_default()
    before = parse(client.get("/metrics").content.decode())
    client.post("/v1/sessions", data="hi", content_type="text/plain")
    client.post("/v1/sessions", data="v=1\r\n", content_type="application/sdp")
    client.options("/v1/sessions")  # a preflight is not an offer
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    after = parse(response.content.decode())
    assert _offers(after, "refused", "unsupported") - _offers(before, "refused", "unsupported") == 1
    assert _offers(after, "refused", "bad_sdp") - _offers(before, "refused", "bad_sdp") == 1
    key = ("edge_offer_duration_seconds_count", labels(outcome="refused"))
    assert after[key] - before.get(key, 0.0) == 2
    assert after[("edge_sessions", labels(state="new"))] == 0
    assert signaling_metrics() is signaling_metrics()  # one registry per process


def test_metrics_token_rules() -> None:
    assert metrics_authorized(None, "")
    assert metrics_authorized("Bearer s3cret", "s3cret")
    assert metrics_authorized("bearer s3cret", "s3cret")
    assert not metrics_authorized(None, "s3cret")
    assert not metrics_authorized("Bearer wrong", "s3cret")
    assert not metrics_authorized("Basic s3cret", "s3cret")


@pytest.mark.django_db
def test_metrics_token_is_required_when_set(client: Client, settings: object) -> None:
    settings.METRICS_TOKEN = "s3cret"  # type: ignore[attr-defined]
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert refused["Content-Type"] == "application/problem+json"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    allowed = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert allowed.status_code == 200 and b"edge_offers" in allowed.content
    assert client.post("/metrics").status_code == 405
