"""Transceiver capacity: the most concurrent echo sessions one transceiver process carries on
one core with < 1 % frame loss and p99 frame-interval jitter < 10 ms, measured at the clients.

Where things run: the edge's transceiver process is pinned to ``RELAY_CPU`` (cpu0), alone;
the clients (``Client``: aiortc for the offer, ICE and DTLS, then pre-encoded Opus packets of
synthetic speech every 20 ms, and echoed packets timestamped as they leave the socket) run in
this process pinned to ``ENDPOINT_CPU`` (cpu1), with the edge's other processes (relay, daphne,
Celery). Sessions ramp up step by step; a step passes when every client's loss and jitter are
within bounds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import av
import numpy as np
import psutil
import pylibsrtp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler
from av.frame import Frame

from bench.common import ENDPOINT_CPU, RELAY_CPU, Row, percentile, pin, unpin
from transceivers.speedups import VoiceOpusEncoder, audio_level_dbov
from whip.client import http_request

FRAME_S = 0.020
MAX_LOSS = 0.01
MAX_JITTER_MS = 10.0
TARGET_SESSIONS = 80  # issue 15: echo calls per transceiver core
OPEN_CONCURRENCY = 4


def _decoded_tone() -> AudioFrame:
    """A 20 ms tone frame after aiortc's Opus encoder and decoder: what the echo agent sends."""
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    payloads, timestamp = OpusEncoder().encode(tone_frames(1)[0])
    decoded: AudioFrame = OpusDecoder().decode(JitterFrame(payloads[0], timestamp))[0]
    return decoded


def audio_level_cost(frames: int = 100) -> tuple[float, float]:
    """(aiortc us/frame, the transceiver's us/frame) for the audio level of one echoed frame
    (``transceivers.speedups.audio_level_dbov``: its sum of squares in C where built, else
    numpy)."""
    frame = _decoded_tone()
    if audio_level_dbov(frame) != rtp.compute_audio_level_dbov(frame):
        raise AssertionError("the transceiver's audio level differs from aiortc's")
    costs = []
    for fn in (rtp.compute_audio_level_dbov, audio_level_dbov):
        started = time.perf_counter()
        for _ in range(frames):
            fn(frame)
        costs.append((time.perf_counter() - started) / frames * 1e6)
    return costs[0], costs[1]


def tone_frames(count: int) -> list[AudioFrame]:
    """``count`` consecutive 20 ms frames of a 440 Hz tone (s16 mono 48 kHz, with ``pts``)."""
    frames = []
    for i in range(count):
        t = (np.arange(960) + i * 960) / 48_000
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * 960
        frames.append(frame)
    return frames


# What a voice agent says: the transceiver's encoder works much harder on speech than on a tone
# (libopus picks its speech modes; 2026-12-01, AMD EPYC: 188 vs 103 us per 20 ms frame).
SPEECH = ("Thanks for calling. I can help you change a booking, check the status of an order, "
          "or answer questions about your account. Which one would you like to start with? "
          "Take your time: I am listening, and you can interrupt me whenever you want.")


def speech_frames() -> list[AudioFrame]:
    """``SPEECH`` spoken by espeak-ng (about ten seconds, pauses included) as 20 ms frames of
    s16 mono 48 kHz; ``RuntimeError`` when espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt install espeak-ng)")
    resampler = AudioResampler(format="s16", layout="mono", rate=48_000, frame_size=960)
    frames: list[AudioFrame] = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), SPEECH], check=True, capture_output=True,
                       timeout=60)
        with av.open(str(wav)) as container:
            for frame in container.decode(audio=0):
                frames += resampler.resample(frame)
    return [f for f in frames if f.samples == 960]


@functools.lru_cache(maxsize=2)
def opus_payloads(source: str) -> tuple[bytes, ...]:
    """``source`` ("speech": ``speech_frames``; "tone": one second of the 440 Hz tone, whole
    periods so it loops without a click) as the voice encoder's Opus packets, encoded once."""
    encoder = VoiceOpusEncoder()
    payloads: list[bytes] = []
    for frame in speech_frames() if source == "speech" else tone_frames(50):
        payloads += encoder.encode(frame)[0]
    return tuple(payloads)


class _Silent(MediaStreamTrack):
    """The offer's audio track: gives aiortc's sender nothing, so the client's RTP comes only
    from ``Client``'s own pacing (aiortc still signals the sender's SSRC and sends RTCP)."""

    kind = "audio"

    async def recv(self) -> Frame:
        await asyncio.get_running_loop().create_future()  # until the sender is stopped
        raise MediaStreamError


@dataclass
class Client:
    """A load-generating WHIP client that costs little more than the network stack.

    aiortc makes the offer and runs ICE and DTLS, so the transceiver sees a real client. The
    media is this class's: once DTLS is up, it sends pre-encoded Opus packets (speech, or a
    tone) every 20 ms on the client's ICE pair, protected with the session's own SRTP keys
    (``pylibsrtp``, as aiortc would), and takes each arriving RTP datagram off the socket before
    aioice: timestamped, unprotected (a packet that fails SRTP authentication is not counted),
    dropped. No per-frame encode, decode, jitter buffer, thread or task hop, which made the
    aiortc client cost about twice the transceiver's CPU per session and made the clients' core,
    not the transceiver's, the limit of the ramp (2026-12-01: 20 sessions, clients 73 % of their
    core, transceiver 37 %). RTCP and STUN (consent checks) go to aiortc as usual.
    """

    base_url: str
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(
        RTCConfiguration(iceServers=[])))
    times: list[float] = field(default_factory=list)  # arrival of each authentic echoed packet
    source: str = "speech"  # what the client says: see opus_payloads
    location: str = ""
    lost: frozenset[int] = frozenset()  # packets (0 is the first) not sent: loss on the way in
    sent: int = 0
    _rx: Any = None  # the client's inbound SRTP session, once DTLS is up
    _sending: bool = False

    async def open(self) -> None:
        self.pc.addTrack(_Silent())
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._intercept_rtp()
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

    def _ice(self) -> Any:
        """The aioice connection under the client's one transport (bundled)."""
        return self.pc.getSenders()[0].transport.transport._connection

    def _intercept_rtp(self) -> None:
        times = self.times

        for protocol in self._ice()._protocols:
            stock = protocol.datagram_received

            def received(data: bytes, addr: Any, stock: Any = stock) -> None:
                # RFC 7983: 128-191 is RTP or RTCP (told apart as aiortc does)
                if len(data) > 12 and 127 < data[0] < 192 and not rtp.is_rtcp(data):
                    arrived = time.monotonic()
                    if self._rx is not None:
                        try:
                            self._rx.unprotect(data)
                        except pylibsrtp.Error:
                            return
                        times.append(arrived)
                    return
                stock(data, addr)

            protocol.datagram_received = received

    def start(self, at: float) -> None:
        """Send a packet every 20 ms from loop time ``at`` on (the DTLS must be connected)."""
        sender = self.pc.getSenders()[0]
        dtls = sender.transport
        pair = self._ice()._nominated[1]
        self._rx = dtls._rx_srtp
        tx, ssrc = dtls._tx_srtp, sender._ssrc
        payload_type: int = self.pc.getTransceivers()[0]._codecs[0].payloadType or 0
        payloads = opus_payloads(self.source)
        seq0, ts0 = random.getrandbits(16), random.getrandbits(32)
        loop = asyncio.get_running_loop()
        transport, remote = pair.protocol.transport, pair.remote_addr
        self._sending = True

        def send(n: int) -> None:
            if not self._sending:
                return
            marker = 0x80 if n == 0 else 0
            header = struct.pack("!BBHII", 0x80, marker | payload_type, (seq0 + n) & 0xFFFF,
                                 (ts0 + n * 960) & 0xFFFFFFFF, ssrc)
            if n not in self.lost:
                transport.sendto(tx.protect(header + payloads[n % len(payloads)]), remote)
                self.sent += 1
            loop.call_at(at + (n + 1) * FRAME_S, send, n + 1)  # on the clock: no drift

        loop.call_at(at, send, 0)

    async def close(self) -> None:
        self._sending = False
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
    stalls: tuple[float, ...] = ()  # ms each: stretches in which most sessions' echoes stopped

    @property
    def ok(self) -> bool:
        return self.loss < MAX_LOSS and self.jitter_p99_ms < MAX_JITTER_MS


def stalls(arrivals: list[list[float]], t0: float, t1: float) -> tuple[float, ...]:
    """Stretches of ``[t0, t1)`` (ms each) in which more than half of the sessions received no
    echo for longer than a frame plus the jitter bound: what a stall of the whole path (a
    process, a core) looks like, as against one late session. ``arrivals``: each session's echo
    times inside the window (seconds, sorted)."""
    slot = FRAME_S
    slots = max(0, int((t1 - t0) / slot))
    silent = [0] * slots
    for inside in arrivals:
        for a, b in zip(inside, inside[1:], strict=False):
            if b - a > FRAME_S + MAX_JITTER_MS / 1000:
                for i in range(int((a - t0) / slot) + 1, min(slots, int((b - t0) / slot))):
                    silent[i] += 1
    found: list[float] = []
    run = 0
    for count in [*silent, 0]:
        if count * 2 > len(arrivals):
            run += 1
        elif run:
            found.append(run * slot * 1000)
            run = 0
    return tuple(found)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def step(base_url: str, sessions: int, window: float, xcvr: psutil.Process,
               source: str = "speech") -> Step:
    clients = [Client(base_url, source=source) for _ in range(sessions)]
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
        now = asyncio.get_running_loop().time() + 0.05
        for i, client in enumerate(clients):  # spread over the 20 ms, as independent callers
            client.start(now + i * FRAME_S / len(clients))
        await asyncio.sleep(1.5)  # past the first echo and the transceiver's jitter buffers
        me = psutil.Process()
        t0, x0, c0 = time.monotonic(), _cpu(xcvr), _cpu(me)
        await asyncio.sleep(window)
        t1, x1, c1 = time.monotonic(), _cpu(xcvr), _cpu(me)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    expected = (t1 - t0) / FRAME_S
    losses, gaps, echoed, windows = [], [], 0, []
    for client in clients:
        inside = [t for t in client.times if t0 <= t < t1]
        windows.append(inside)
        echoed += len(inside)
        losses.append(max(0.0, 1 - len(inside) / expected))
        gaps += [abs((b - a) - FRAME_S) * 1000 for a, b in zip(inside, inside[1:], strict=False)]
    return Step(sessions, max(losses), percentile(gaps, 99), (x1 - x0) / (t1 - t0),
                (c1 - c0) / (t1 - t0), echoed, t1 - t0,
                stalls(windows, t0, t1))


def _stalled(step: Step) -> str:
    """The ramp's words for a step's stalls, e.g. " (stalls: 220 ms, 40 ms)"; "" if none."""
    if not step.stalls:
        return ""
    return f" (stalls: {', '.join(f'{ms:.0f} ms' for ms in step.stalls)})"


def _transceiver(children: dict[str, int]) -> psutil.Process:
    pid = next(pid for name, pid in children.items() if "transceiver" in name)
    return psutil.Process(pid)


async def ramp(quick: bool) -> list[Step]:
    from bench.edge import edge, other_edge

    # BENCH_CAPACITY_ENV (JSON): the edge's environment for this ramp, e.g. the voice encoder's
    # '{"TRANSCEIVER_OPUS_COMPLEXITY": "5", "TRANSCEIVER_OPUS_BANDWIDTH": "wideband"}'
    extra = json.loads(os.environ.get("BENCH_CAPACITY_ENV", "{}"))
    running = other_edge("capacity", extra) if extra else edge()
    xcvr = _transceiver(running.children())
    # the clients are load generators: spare their core aiortc's per-sample Python loop, as the
    # transceiver does (transceivers/speedups.py; see the "audio level" row)
    rtp.compute_audio_level_dbov = audio_level_dbov  # type: ignore[assignment]
    others = [pid for name, pid in running.children().items() if pid != xcvr.pid]
    pin(RELAY_CPU, xcvr.pid)
    pin(ENDPOINT_CPU)
    for pid in others:  # the transceiver's core is its own
        pin(ENDPOINT_CPU, pid)
    steps: list[Step] = []
    try:
        for n in (5, 10) if quick else (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100):
            result = await step(running.base_url, n, 2.0 if quick else 5.0, xcvr)
            steps.append(result)
            if not result.ok:
                break
            await asyncio.sleep(1.0)
    finally:
        for pid in (0, xcvr.pid, *others):
            unpin(pid)
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
                      f"xcvr {s.transceiver_cpu:.0%} clients {s.client_cpu:.0%}{_stalled(s)}"
                      for s in steps)
    capped = "ramp ended before a failure" if last.ok else f"{last.sessions} failed{_stalled(last)}"
    return [
        Row("capacity: echo sessions on one core", best.sessions if passed else 0, "sessions",
            target=f">= {TARGET_SESSIONS}", met=bool(passed) and best.sessions >= TARGET_SESSIONS,
            note=f"speech; loss < 1 %, p99 jitter < 10 ms; {capped}"),
        Row("capacity: transceiver CPU at that load", best.transceiver_cpu * 100, "% core",
            note=f"~{best.transceiver_cpu * 100 / max(best.sessions, 1):.2f} % core/session"),
        Row("capacity: client CPU at that load", best.client_cpu * 100, "% core",
            note="clients share cpu1; at 100 % the clients, not the transceiver, are the limit"),
        Row("capacity: CPU-bound estimate", best.sessions / max(best.transceiver_cpu, 1e-9),
            "sessions", note=f"{best.sessions} sessions / transceiver core share at the last "
                             "passing step: what one whole core could carry if nothing else ran"),
        Row("capacity: ramp", float(len(steps)), "steps", note=trail),
        Row("capacity: calls vs transceiver processes", float("nan"), "-",
            note="not measured: one transceiver per core with the clients on a core of their "
                 f"own needs >= 3 cores ({os.cpu_count()} here); the sizing rule is one "
                 "transceiver process per core"),
        Row("capacity: aiortc audio level per sent frame", stock_us, "us", baseline=fast_us,
            ratio=stock_us / fast_us,
            note=f"echoed (decoded) frame: {stock_us * 50 / 1e4:.1f} % core per session at "
                 "50 frames/s; baseline: the transceiver's (transceivers.speedups: C, else numpy)"),
    ]
