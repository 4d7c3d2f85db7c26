"""Transceiver capacity: the most concurrent echo sessions one transceiver process carries on
one core with < 1 % frame loss and p99 frame-interval jitter < 10 ms, measured at the clients.

Where things run: the edge's transceiver process is pinned to ``RELAY_CPU`` (cpu0); every
client (aiortc peers sending a paced 20 ms tone and receiving the echo) runs in this process,
pinned to ``ENDPOINT_CPU`` (cpu1); the relay, daphne and Celery float. Sessions ramp up step by
step; a step passes when every client's loss and jitter are within bounds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import numpy as np
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from bench.common import ENDPOINT_CPU, RELAY_CPU, Row, percentile, pin, unpin
from transceivers.speedups import audio_level_dbov
from whip.client import ToneTrack, http_request

FRAME_S = 0.020
MAX_LOSS = 0.01
MAX_JITTER_MS = 10.0
OPEN_CONCURRENCY = 4


def _decoded_tone() -> AudioFrame:
    """A 20 ms tone frame after aiortc's Opus encoder and decoder: what the echo agent sends."""
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    t = np.arange(960) / 48_000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
    frame = AudioFrame.from_ndarray(tone, format="s16", layout="mono")
    frame.sample_rate, frame.pts = 48_000, 0
    payloads, timestamp = OpusEncoder().encode(frame)
    decoded: AudioFrame = OpusDecoder().decode(JitterFrame(payloads[0], timestamp))[0]
    return decoded


def audio_level_cost(frames: int = 100) -> tuple[float, float]:
    """(aiortc us/frame, numpy us/frame) for the audio level of one echoed frame."""
    frame = _decoded_tone()
    if audio_level_dbov(frame) != rtp.compute_audio_level_dbov(frame):
        raise AssertionError("numpy audio level differs from aiortc's")
    costs = []
    for fn in (rtp.compute_audio_level_dbov, audio_level_dbov):
        started = time.perf_counter()
        for _ in range(frames):
            fn(frame)
        costs.append((time.perf_counter() - started) / frames * 1e6)
    return costs[0], costs[1]


@dataclass
class Client:
    """A light WHIP client: sends the tone, keeps only arrival times of echoed RTP packets
    (one 20 ms Opus frame each)."""

    base_url: str
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(
        RTCConfiguration(iceServers=[])))
    times: list[float] = field(default_factory=list)
    location: str = ""

    async def open(self) -> None:
        self.pc.addTrack(ToneTrack(3600.0))
        self._record_rtp()
        self.pc.on("track", lambda track: asyncio.ensure_future(self._read(track)))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        for _ in range(20):  # 503 while the fleet view catches up with a fresh edge
            status, headers, body = await asyncio.to_thread(
                http_request, "POST", urljoin(self.base_url, "/v1/sessions"),
                self.pc.localDescription.sdp.encode(), {"Content-Type": "application/sdp"})
            if status != 503:
                break
            await asyncio.sleep(0.5)
        if status != 201:
            raise RuntimeError(f"POST /v1/sessions: {status} {body[:200]!r}")
        self.location = urljoin(self.base_url, headers["Location"])
        await self.pc.setRemoteDescription(RTCSessionDescription(body.decode(), "answer"))

    def _record_rtp(self) -> None:
        """Timestamp each echoed RTP packet as it leaves SRTP (before the client's own jitter
        buffer and decoder thread, whose scheduling is the client's, not the transceiver's)."""
        receiver = self.pc.getTransceivers()[0].receiver
        handle = receiver._handle_rtp_packet
        times = self.times

        async def recorded(packet: Any, arrival_time_ms: int) -> None:
            times.append(time.monotonic())
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = recorded  # type: ignore[method-assign]

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:  # drain decoded frames so they do not pile up
            try:
                await track.recv()
            except MediaStreamError:
                return

    async def close(self) -> None:
        if self.location:
            await asyncio.to_thread(http_request, "DELETE", self.location, b"", {})
        await self.pc.close()


@dataclass(frozen=True)
class Step:
    sessions: int
    loss: float  # worst client
    jitter_p99_ms: float  # over every client's frame intervals
    transceiver_cpu: float  # share of one core
    client_cpu: float
    echoed: int = 0  # echoed RTP packets (20 ms frames) the clients received in the window
    window: float = 0.0  # seconds

    @property
    def ok(self) -> bool:
        return self.loss < MAX_LOSS and self.jitter_p99_ms < MAX_JITTER_MS


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def step(base_url: str, sessions: int, window: float, xcvr: psutil.Process) -> Step:
    clients = [Client(base_url) for _ in range(sessions)]
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one(client: Client) -> None:
        async with gate:
            await client.open()

    try:
        await asyncio.gather(*(open_one(c) for c in clients))
        deadline = time.monotonic() + 30
        while any(c.pc.connectionState != "connected" for c in clients):
            if time.monotonic() > deadline:
                states = sorted(c.pc.connectionState for c in clients)
                raise RuntimeError(f"sessions did not connect: {states}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # past the first echo and the jitter buffers' fill
        me = psutil.Process()
        t0, x0, c0 = time.monotonic(), _cpu(xcvr), _cpu(me)
        await asyncio.sleep(window)
        t1, x1, c1 = time.monotonic(), _cpu(xcvr), _cpu(me)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    expected = (t1 - t0) / FRAME_S
    losses, gaps, echoed = [], [], 0
    for client in clients:
        inside = [t for t in client.times if t0 <= t < t1]
        echoed += len(inside)
        losses.append(max(0.0, 1 - len(inside) / expected))
        gaps += [abs((b - a) - FRAME_S) * 1000 for a, b in zip(inside, inside[1:], strict=False)]
    return Step(sessions, max(losses), percentile(gaps, 99), (x1 - x0) / (t1 - t0),
                (c1 - c0) / (t1 - t0), echoed, t1 - t0)


def _transceiver(children: dict[str, int]) -> psutil.Process:
    pid = next(pid for name, pid in children.items() if "transceiver" in name)
    return psutil.Process(pid)


async def ramp(quick: bool) -> list[Step]:
    from bench.edge import edge

    running = edge()
    xcvr = _transceiver(running.children())
    # the clients are load generators: spare their core aiortc's per-sample Python loop, as the
    # transceiver does (transceivers/speedups.py; see the "audio level" row)
    rtp.compute_audio_level_dbov = audio_level_dbov  # type: ignore[assignment]
    pin(RELAY_CPU, xcvr.pid)
    pin(ENDPOINT_CPU)
    steps: list[Step] = []
    try:
        for n in (5, 10) if quick else (5, 10, 20, 30, 40, 50, 60, 80, 100):
            result = await step(running.base_url, n, 2.0 if quick else 5.0, xcvr)
            steps.append(result)
            if not result.ok:
                break
            await asyncio.sleep(1.0)
    finally:
        unpin()
        unpin(xcvr.pid)
    return steps


def run(quick: bool) -> list[Row]:
    stock_us, fast_us = audio_level_cost()
    stock_level = rtp.compute_audio_level_dbov
    try:
        steps = asyncio.run(ramp(quick))
    finally:
        rtp.compute_audio_level_dbov = stock_level
    passed = [s for s in steps if s.ok]
    best = passed[-1] if passed else steps[0]
    last = steps[-1]
    trail = "; ".join(f"{s.sessions}: loss {s.loss:.1%} p99 {s.jitter_p99_ms:.1f} ms "
                      f"xcvr {s.transceiver_cpu:.0%} clients {s.client_cpu:.0%}" for s in steps)
    capped = "ramp ended before a failure" if last.ok else f"{last.sessions} failed"
    return [
        Row("capacity: echo sessions on one core", best.sessions if passed else 0, "sessions",
            note=f"loss < 1 %, p99 jitter < 10 ms; {capped}"),
        Row("capacity: transceiver CPU at that load", best.transceiver_cpu * 100, "% core",
            note=f"~{best.transceiver_cpu * 100 / max(best.sessions, 1):.2f} % core/session"),
        Row("capacity: client CPU at that load", best.client_cpu * 100, "% core",
            note="clients share cpu1; at 100 % the clients, not the transceiver, are the limit"),
        Row("capacity: CPU-bound estimate", best.sessions / max(best.transceiver_cpu, 1e-9),
            "sessions", note=f"{best.sessions} sessions / transceiver core share at the last "
                             "passing step: what one whole core could carry if nothing else ran"),
        Row("capacity: ramp", float(len(steps)), "steps", note=trail),
        Row("capacity: aiortc audio level per sent frame", stock_us, "us", baseline=fast_us,
            ratio=stock_us / fast_us,
            note=f"echoed (decoded) frame: {stock_us * 50 / 1e4:.1f} % core per session at "
                 "50 frames/s; baseline: numpy (transceivers.speedups, used by the transceiver)"),
    ]
