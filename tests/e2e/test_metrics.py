"""``/metrics`` of a real ``manage.py up`` scraped during a real aiortc call: signaling counts
the offer, the relay and the transceiver count the call's packets, set-up time is observed and
the session is counted as connected; every metric the Grafana dashboard queries is there."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request

import pytest
import redis

from calls.metrics import steering_reason
from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from tests.deploy.test_grafana import METRIC, queries
from tests.e2e.conftest import Edge, placed_call
from whip.client import Call

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin_addresses(edge: Edge, timeout: float = 10.0) -> tuple[str, str]:
    """The relay's and the transceiver's admin HOST:PORT, as their heartbeats name them."""
    client = redis.Redis.from_url(edge.redis_url)
    deadline = time.monotonic() + timeout
    while True:
        relay_raw = client.get(relay_heartbeat_key(1, 0))
        xcvr_raw = client.get(transceiver_heartbeat_key(1))
        relay = RelayHeartbeat.from_json(relay_raw).admin if relay_raw else ""
        xcvr = TransceiverHeartbeat.from_json(xcvr_raw).admin if xcvr_raw else ""
        if relay and xcvr:
            return relay, xcvr
        assert time.monotonic() < deadline, "no admin address in the heartbeats"
        time.sleep(0.1)


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 when absent; labels not given are summed over."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape_all(edge: Edge, relay: str, xcvr: str) -> tuple[Samples, Samples, Samples]:
    return await asyncio.gather(
        asyncio.to_thread(scrape, f"{edge.base_url}/metrics"),
        asyncio.to_thread(scrape, f"http://{relay}/metrics"),
        asyncio.to_thread(scrape, f"http://{xcvr}/metrics"),
    )


async def first_scrapes(edge: Edge) -> tuple[str, str, tuple[Samples, Samples, Samples]]:
    """Admin addresses and a first scrape of all three; a relay restarted by an earlier test
    may still have its dead predecessor's heartbeat for a moment, so retry."""
    deadline = time.monotonic() + 20
    while True:
        relay, xcvr = admin_addresses(edge)
        try:
            return relay, xcvr, await scrape_all(edge, relay, xcvr)
        except OSError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)


async def started_call(edge: Edge) -> Call:
    """A started call; 503s retried for 20 s (an earlier test may have restarted a node)."""
    return await placed_call(edge, seconds=2.0, wait=20)


async def test_a_call_shows_up_in_every_processes_metrics(edge: Edge) -> None:
    relay, xcvr, (sig0, relay0, xcvr0) = await first_scrapes(edge)
    call = await started_call(edge)
    try:
        await call.wait_connected()
        await call.play(settle=0.3, limit=3.0)
        sent, echoed = call.track.sent, len(call.received.rtp_times)
        sig1, relay1, xcvr1 = await scrape_all(edge, relay, xcvr)
        session_id = call.location.rsplit("/", 1)[1]
    finally:
        await call.stop()

    def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    logger.info("call: %d RTP sent, %d received; relay in +%d out +%d", sent, echoed,
                delta(relay0, relay1, "edge_relay_packets_total", direction="in"),
                delta(relay0, relay1, "edge_relay_packets_total", direction="out"))
    # signaling: the offer, its latency, its steering decision, the session's state
    assert delta(sig0, sig1, "edge_offers_total", outcome="answered", code="created") == 1
    assert delta(sig0, sig1, "edge_offer_duration_seconds_count", outcome="answered") == 1
    reason = steering_reason(call.response_headers["X-Region-Reason"])
    assert delta(sig0, sig1, "edge_steering_decisions_total", reason=reason, region="local") == 1
    assert value(sig1, "edge_sessions", state="connected") >= 1
    # relay: every RTP packet the client sent passed in, every one it received passed out
    assert delta(relay0, relay1, "edge_relay_packets_total", direction="in") >= sent - 5
    assert delta(relay0, relay1, "edge_relay_packets_total", direction="out") >= echoed > 50
    assert delta(relay0, relay1, "edge_relay_flows_learned_total", source="stun") >= 1
    # transceiver: connected, set-up times observed, the packets, the session's loss series
    assert value(xcvr1, "edge_transceiver_sessions", state="connected") >= 1
    assert delta(xcvr0, xcvr1, "edge_transceiver_ice_setup_seconds_count") == 1
    assert delta(xcvr0, xcvr1, "edge_transceiver_dtls_setup_seconds_count") == 1
    assert 0 < delta(xcvr0, xcvr1, "edge_transceiver_dtls_setup_seconds_sum") < 5
    assert delta(xcvr0, xcvr1, "edge_transceiver_packets_total", direction="in") >= sent - 5
    loss = value(xcvr1, "edge_transceiver_session_audio_loss_ratio", session=session_id,
                 direction="in")
    assert ("edge_transceiver_session_audio_loss_ratio",
            frozenset({"transceiver": "1", "session": session_id, "direction": "in"}.items())
            ) in xcvr1
    assert loss < 0.05, f"{loss:.1%} of the call's audio lost on loopback"
    # everything the Grafana dashboard asks for is exported by some process
    names = {name for samples in (sig1, relay1, xcvr1) for name, _ in samples}
    queried = {name for expr in queries() for name in METRIC.findall(expr)}
    assert queried - names == set()

    async with asyncio.timeout(10):  # the session's series go with it
        while any(n.startswith("edge_transceiver_session_audio") and ("session", session_id) in ls
                  for n, ls in (await asyncio.to_thread(scrape, f"http://{xcvr}/metrics"))):
            await asyncio.sleep(0.2)
