"""The transceiver's Prometheus series: set-up time and loop lag histograms observed as they
happen, and a collector that reads sessions, socket counters and per-session audio loss when
Prometheus scrapes (nothing per packet)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from fleet.metrics import new_registry

logger = logging.getLogger(__name__)

# answer -> ICE / DTLS connected: ~20 ms on loopback, seconds over bad networks, 30 s timeout
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# how late a periodic wakeup fires: ~0 when idle, tens of ms when the loop is saturated
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LAG_INTERVAL = 0.5  # seconds between loop-lag probes


@dataclass(frozen=True, slots=True)
class AudioLoss:
    """RTP packets lost and received in one direction of one session (RFC 3550 §6.4.1)."""

    lost: int
    received: int

    @property
    def ratio(self) -> float:
        expected = self.lost + self.received
        return self.lost / expected if expected > 0 else 0.0


def audio_loss(stats: Iterable[object]) -> dict[str, AudioLoss]:
    """Loss by direction from an aiortc stats report's values: ``in`` (client to us, counted by
    our receiver) and ``out`` (us to client, from the client's RTCP receiver reports)."""
    found: dict[str, AudioLoss] = {}
    for entry in stats:
        kind = getattr(entry, "type", "")
        if getattr(entry, "kind", "") != "audio" or kind not in ("inbound-rtp",
                                                                 "remote-inbound-rtp"):
            continue
        direction = "in" if kind == "inbound-rtp" else "out"
        lost = max(0, int(getattr(entry, "packetsLost", 0)))  # duplicates make it negative
        received = int(getattr(entry, "packetsReceived", 0))
        previous = found.get(direction, AudioLoss(0, 0))
        found[direction] = AudioLoss(previous.lost + lost, previous.received + received)
    return found


@dataclass(frozen=True, slots=True)
class TransceiverSnapshot:
    """What one scrape reads from a transceiver."""

    transceiver_id: int
    sessions: int
    connected: int
    capacity: int
    draining: bool
    packets_in: int
    packets_out: int
    send_errors: int
    drops: Mapping[str, int]
    lean_in: int = 0  # of packets_in, those the lean path took (transceivers.lean_rtp)
    audio: Mapping[str, Mapping[str, AudioLoss]] = field(default_factory=dict)  # session -> dir


def transceiver_families(snap: TransceiverSnapshot) -> list[Metric]:
    """The metric families for one snapshot (pure: tests feed it values)."""
    tid = [str(snap.transceiver_id)]
    sessions = GaugeMetricFamily("edge_transceiver_sessions", "Live sessions, by state",
                                 labels=("transceiver", "state"))
    sessions.add_metric([*tid, "connected"], snap.connected)
    sessions.add_metric([*tid, "connecting"], snap.sessions - snap.connected)
    capacity = GaugeMetricFamily("edge_transceiver_capacity", "Sessions this transceiver takes",
                                 labels=("transceiver",))
    capacity.add_metric(tid, snap.capacity)
    draining = GaugeMetricFamily("edge_transceiver_draining", "1 while it drains",
                                 labels=("transceiver",))
    draining.add_metric(tid, 1 if snap.draining else 0)
    packets = CounterMetricFamily(
        "edge_transceiver_packets", "Datagrams on the shared socket (in: from relays, out: to "
        "relays)", labels=("transceiver", "direction"))
    packets.add_metric([*tid, "in"], snap.packets_in)
    packets.add_metric([*tid, "out"], snap.packets_out)
    lean = CounterMetricFamily(
        "edge_transceiver_lean_packets", "Received media datagrams of established sessions "
        "handled in the socket's read callback (transceivers.lean_rtp), of packets in; the "
        "rest take aiortc's reader task (counted per process: one transceiver per process)",
        labels=("transceiver",))
    lean.add_metric(tid, snap.lean_in)
    errors = CounterMetricFamily("edge_transceiver_send_errors", "Datagrams the socket refused",
                                 labels=("transceiver",))
    errors.add_metric(tid, snap.send_errors)
    drops = CounterMetricFamily("edge_transceiver_drops", "Datagrams dropped by the mux, by "
                                "reason", labels=("transceiver", "reason"))
    for reason, count in sorted(snap.drops.items()):
        drops.add_metric([*tid, reason], count)
    return [sessions, capacity, draining, packets, lean, errors, drops,
            *_audio_families(snap)]


def _audio_families(snap: TransceiverSnapshot) -> list[Metric]:
    labels = ("transceiver", "session", "direction")
    lost = GaugeMetricFamily(
        "edge_transceiver_session_audio_packets_lost", "RTP audio packets lost so far in a live "
        "session (in: client to transceiver; out: transceiver to client, from RTCP)", labels=labels)
    ratio = GaugeMetricFamily(
        "edge_transceiver_session_audio_loss_ratio", "Lost / expected RTP audio packets so far "
        "in a live session", labels=labels)
    for session_id, by_direction in sorted(snap.audio.items()):
        for direction, loss in sorted(by_direction.items()):
            values = [str(snap.transceiver_id), session_id, direction]
            lost.add_metric(values, loss.lost)
            ratio.add_metric(values, loss.ratio)
    return [lost, ratio]


class TransceiverCollector:
    """A ``prometheus_client`` collector over a transceiver's live state (read at scrape)."""

    def __init__(self, read: Callable[[], TransceiverSnapshot]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return transceiver_families(self._read())


class TransceiverMetrics:
    """One transceiver's registry and the series observed as events happen."""

    def __init__(self, transceiver_id: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        label = {"transceiver": str(transceiver_id)}
        self.ice_setup = Histogram(
            "edge_transceiver_ice_setup_seconds", "Answer sent to ICE connected",
            labelnames=("transceiver",), buckets=SETUP_BUCKETS, registry=self.registry,
        ).labels(**label)
        self.dtls_setup = Histogram(
            "edge_transceiver_dtls_setup_seconds", "Answer sent to DTLS connected (the session "
            "carries media)", labelnames=("transceiver",), buckets=SETUP_BUCKETS,
            registry=self.registry,
        ).labels(**label)
        self.loop_lag = Histogram(
            "edge_transceiver_loop_lag_seconds", "How late a periodic wakeup of the event loop "
            "fired", labelnames=("transceiver",), buckets=LAG_BUCKETS, registry=self.registry,
        ).labels(**label)
        self.sessions_ended = Counter(
            "edge_transceiver_sessions_ended", "Sessions removed, by end state (ended, failed)",
            labelnames=("transceiver", "state"), registry=self.registry,
        )
        self._transceiver = str(transceiver_id)
        for state in ("ended", "failed"):  # at 0 from the start: rate() needs the series
            self.sessions_ended.labels(transceiver=self._transceiver, state=state)

    def session_ended(self, state: str) -> None:
        self.sessions_ended.labels(transceiver=self._transceiver, state=state).inc()


async def measure_loop_lag(
    observe: Callable[[float], None], *, interval: float = LAG_INTERVAL,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Sleep ``interval`` again and again and observe how late each wakeup came."""
    loop = asyncio.get_running_loop()
    while not stopping():
        started = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - started - interval))


class StatsSource(Protocol):
    """What the audio sampler needs of a session's peer connection (aiortc's)."""

    @property
    def connectionState(self) -> str: ...  # noqa: N802 (aiortc's name)

    async def getStats(self) -> Mapping[str, object]: ...  # noqa: N802


class AudioSampler:
    """Per-session audio loss, refreshed from aiortc's stats right before each scrape; only
    live sessions are kept, so a session's series go when it ends."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, AudioLoss]] = {}

    async def sample(self, sessions: Iterable[tuple[str, StatsSource]]) -> None:
        latest: dict[str, dict[str, AudioLoss]] = {}
        for session_id, pc in sessions:
            if pc.connectionState != "connected":
                continue
            report = await pc.getStats()
            latest[session_id] = audio_loss(report.values())
        self.latest = latest
