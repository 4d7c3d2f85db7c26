"""The transceiver's Prometheus series: pure families, loop lag, and a real session scraped."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fleet.addresses import Addr
from fleet.metrics import exposition
from tests.fleet.test_admin_http import get
from tests.transceivers.conftest import Client, Framer, make_config, make_transceiver, open_session
from transceivers import lean_rtp
from transceivers.metrics import (
    AudioLoss,
    TransceiverCollector,
    TransceiverSnapshot,
    audio_loss,
    measure_loop_lag,
)

pytestmark = pytest.mark.django_db(transaction=True)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def test_audio_loss_reads_aiortc_stats_by_direction() -> None:
    from aiortc.stats import (
        RTCInboundRtpStreamStats,
        RTCOutboundRtpStreamStats,
        RTCRemoteInboundRtpStreamStats,
    )

    now = datetime.datetime.now(datetime.UTC)
    common = {"timestamp": now, "ssrc": 1, "transportId": "t", "jitter": 0}
    stats = [
        RTCInboundRtpStreamStats(type="inbound-rtp", id="a", kind="audio", packetsReceived=90,
                                 packetsLost=10, **common),
        RTCRemoteInboundRtpStreamStats(type="remote-inbound-rtp", id="b", kind="audio",
                                       packetsReceived=200, packetsLost=-1, roundTripTime=0.01,
                                       fractionLost=0, **common),
        RTCInboundRtpStreamStats(type="inbound-rtp", id="c", kind="video", packetsReceived=5,
                                 packetsLost=5, **common),
        RTCOutboundRtpStreamStats(type="outbound-rtp", id="d", kind="audio", packetsSent=3,
                                  bytesSent=9, trackId="x", timestamp=now, ssrc=1,
                                  transportId="t"),
    ]
    got = audio_loss(stats)
    assert got == {"in": AudioLoss(10, 90), "out": AudioLoss(0, 200)}
    assert got["in"].ratio == pytest.approx(0.1) and AudioLoss(0, 0).ratio == 0.0


def test_families_from_a_snapshot() -> None:
    snapshot = TransceiverSnapshot(
        transceiver_id=4, sessions=3, connected=2, capacity=10, draining=False, packets_in=50,
        packets_out=40, send_errors=1, drops={"unknown_ufrag": 2},
        audio={"s1": {"in": AudioLoss(1, 99)}},
    )
    registry = CollectorRegistry()
    registry.register(TransceiverCollector(lambda: snapshot))
    got = parse(exposition(registry).decode())
    assert got[("edge_transceiver_sessions", labels(transceiver="4", state="connected"))] == 2
    assert got[("edge_transceiver_sessions", labels(transceiver="4", state="connecting"))] == 1
    assert got[("edge_transceiver_packets_total", labels(transceiver="4", direction="in"))] == 50
    assert got[("edge_transceiver_drops_total",
                labels(transceiver="4", reason="unknown_ufrag"))] == 2
    key = labels(transceiver="4", session="s1", direction="in")
    assert got[("edge_transceiver_session_audio_loss_ratio", key)] == pytest.approx(0.01)
    assert got[("edge_transceiver_session_audio_packets_lost", key)] == 1


async def test_loop_lag_sees_a_blocked_loop() -> None:
    seen: list[float] = []
    task = asyncio.create_task(measure_loop_lag(seen.append, interval=0.05))
    await asyncio.sleep(0.12)
    time.sleep(0.2)  # block the loop: the next wakeup is ~0.2 s late  # noqa: ASYNC251
    async with asyncio.timeout(2):
        while not any(lag > 0.1 for lag in seen):
            await asyncio.sleep(0.01)
    task.cancel()
    assert min(seen) < 0.05  # idle wakeups are (nearly) on time


class LossyFramer(Framer):
    """Drops every 10th RTP packet from the client (RFC 7983: first byte 128..191)."""

    rtp = 0

    def _from_client(self, data: bytes, client: Addr) -> None:
        if 128 <= data[0] <= 191:
            self.rtp += 1
            if self.rtp % 10 == 0:
                return
        super()._from_client(data, client)


async def test_a_session_is_counted_timed_and_its_loss_series_go_with_it(redis_url: str) -> None:
    config = make_config(redis_url, admin=("127.0.0.1", 0))
    async with make_transceiver(config) as transceiver:
        port = int(transceiver.admin_address.rsplit(":", 1)[1])
        tid = str(config.transceiver_id)
        client = Client()
        async with LossyFramer(transceiver.address) as framer:
            session_id = await open_session(config.transceiver_id, framer, client)
            await client.wait_connected()
            async with asyncio.timeout(20):  # 80 RTP packets (1.6 s unloaded), 8 dropped
                while framer.rtp < 80:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            got = parse((await get(port, "/metrics"))[2])
            assert got[("edge_transceiver_sessions", labels(transceiver=tid,
                                                            state="connected"))] == 1
            assert got[("edge_transceiver_ice_setup_seconds_count", labels(transceiver=tid))] == 1
            assert got[("edge_transceiver_dtls_setup_seconds_count", labels(transceiver=tid))] == 1
            assert 0 < got[("edge_transceiver_dtls_setup_seconds_sum",
                            labels(transceiver=tid))] < 5
            assert got[("edge_transceiver_packets_total", labels(transceiver=tid,
                                                                 direction="in"))] > 60
            if lean_rtp.active():  # the established call's packets took the lean path
                assert got[("edge_transceiver_lean_packets_total",
                            labels(transceiver=tid))] > 40
            key = labels(transceiver=tid, session=session_id, direction="in")
            assert got[("edge_transceiver_session_audio_packets_lost", key)] >= 3
            assert 0.05 < got[("edge_transceiver_session_audio_loss_ratio", key)] < 0.2
            assert got[("edge_transceiver_loop_lag_seconds_count", labels(transceiver=tid))] >= 1
            await client.pc.close()
            async with asyncio.timeout(5):
                while transceiver.sessions and len(transceiver.sessions):
                    await asyncio.sleep(0.05)
        after = parse((await get(port, "/metrics"))[2])
        assert not [k for k in after if k[0].startswith("edge_transceiver_session_audio")]
        assert after[("edge_transceiver_sessions_ended_total",
                      labels(transceiver=tid, state="ended"))] == 1
