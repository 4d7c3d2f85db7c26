"""Transceiver test harness: a tiny framing "relay", a 440 Hz client track, a running transceiver.

The ``Framer`` is a test stand-in for the relay (one client-facing socket, one socket towards the
transceiver), written with ``DatagramProtocol`` because speed does not matter here.
"""

from __future__ import annotations

import asyncio
import fractions
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame
from channels import layers as channel_layers

from calls.reporting import SessionRowReporter
from fleet.addresses import Addr
from relays.framing import pack_header, parse_header
from transceivers import control
from transceivers.daemon import Transceiver, TransceiverConfig

RATE = 48000
SAMPLES = 960  # 20 ms
TONE_HZ = 440.0


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


class Framer:
    """Client datagram -> header(client) + payload -> transceiver; and back, unframed."""

    def __init__(self, transceiver: Addr) -> None:
        self.transceiver = transceiver
        self.clients: set[Addr] = set()
        self.public: _Side = _Side(self._from_client)
        self.internal: _Side = _Side(self._from_transceiver)

    async def __aenter__(self) -> Framer:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.public, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self.internal, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for side in (self.public, self.internal):
            assert side.transport is not None
            side.transport.close()

    @property
    def public_addr(self) -> Addr:
        assert self.public.transport is not None
        host, port = self.public.transport.get_extra_info("sockname")[:2]
        return host, port

    def _from_client(self, data: bytes, client: Addr) -> None:
        self.clients.add(client)
        assert self.internal.transport is not None
        self.internal.transport.sendto(pack_header(client) + data, self.transceiver)

    def _from_transceiver(self, data: bytes, _: Addr) -> None:
        client, offset = parse_header(data)
        assert self.public.transport is not None
        self.public.transport.sendto(data[offset:], client)


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine, 20 ms mono 48 kHz frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None
        self.first_sent_at: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = self.first_sent_at = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self._pts + np.arange(SAMPLES)) / RATE
        samples = (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


def dominant_frequency(frame: AudioFrame) -> float:
    """Peak frequency of a frame's first channel (zero-padded FFT: 1 Hz bins)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    mono = data.reshape(-1)[::channels].astype(np.float64) if data.shape[0] == 1 else data[0]
    if np.abs(mono).max() < 100:
        return 0.0
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono)), n=frame.sample_rate))
    return float(np.argmax(spectrum))  # n = sample rate, so bin index = Hz


@dataclass
class Client:
    """A plain aiortc peer (its own sockets) sending the tone and collecting the echo."""

    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    tone: ToneTrack = field(default_factory=ToneTrack)
    echo: asyncio.Future[MediaStreamTrack] | None = None

    async def offer(self) -> str:
        self.echo = asyncio.get_running_loop().create_future()
        self.pc.addTrack(self.tone)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            assert self.echo is not None
            if not self.echo.done():
                self.echo.set_result(track)

        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                await asyncio.sleep(0.02)

    def nominated_local(self) -> Addr:
        connection = self.pc.getSenders()[0].transport.transport._connection
        candidate = connection._nominated[1].local_candidate
        return candidate.host, candidate.port


def credentials() -> tuple[str, str]:
    """A fresh ICE ufrag (24 chars) and password (32 chars), as signaling would mint."""
    return secrets.token_hex(12), secrets.token_hex(16)


async def open_session(
    transceiver_id: int, framer: Framer, client: Client, session_id: str | None = None,
    ufrag: str | None = None,
) -> str:
    """Offer from ``client`` through the control channel; apply the answer; return the id."""
    session_id = session_id or str(uuid.uuid4())
    minted_ufrag, pwd = credentials()
    answer = await control.request_answer(
        transceiver_id=transceiver_id, session_id=session_id, offer_sdp=await client.offer(),
        ufrag=ufrag or minted_ufrag, pwd=pwd, relay_public=framer.public_addr, timeout=10.0,
    )
    await client.answer(answer)
    return session_id


@pytest.fixture(autouse=True)
def fresh_channel_layer(redis_url: str) -> None:
    """Channel layers hold loop-bound state: one per test (each test has its own loop)."""
    channel_layers.channel_layers.backends = {}


def make_config(redis_url: str, **overrides: Any) -> TransceiverConfig:
    values: dict[str, Any] = {
        "transceiver_id": 40 + secrets.randbelow(1000), "bind_host": "127.0.0.1", "bind_port": 0,
        "redis_url": redis_url, "connect_timeout": 10.0, "heartbeat_interval": 0.2,
    }
    return TransceiverConfig(**{**values, **overrides})


def make_transceiver(config: TransceiverConfig, **kwargs: Any) -> Transceiver:
    """A transceiver composed as ``run_transceiver`` composes it (session rows in the DB)."""
    return Transceiver(config, reporter=SessionRowReporter(), **kwargs)


@pytest.fixture
async def transceiver(redis_url: str) -> AsyncIterator[Transceiver]:
    async with make_transceiver(make_config(redis_url)) as running:
        yield running
