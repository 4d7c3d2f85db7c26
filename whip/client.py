"""A WHIP client on aiortc: sends a 440 Hz tone, records what comes back, measures the echo.

Used by ``manage.py call`` (a smoke test for operators), the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
TONE_HZ = 440.0
_FFT_SIZE = 4800  # zero-padded: 10 Hz bins


def dominant_frequency(samples: np.ndarray) -> tuple[float, float]:
    """Return (peak Hz, share of spectral energy within +-20 Hz of the peak) of mono samples."""
    x = samples.astype(np.float64)
    if not np.any(x):
        return 0.0, 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=_FFT_SIZE)) ** 2
    peak = int(np.argmax(spectrum))
    band = spectrum[max(0, peak - 2) : peak + 3].sum()
    return peak * SAMPLE_RATE / _FFT_SIZE, float(band / spectrum.sum())


def is_tone(frame: AudioFrame, hz: float = TONE_HZ) -> bool:
    """True when ``frame`` is dominated by a tone at ``hz`` (+-20 Hz)."""
    samples = frame.to_ndarray()
    mono = samples[0, :: len(frame.layout.channels)] if samples.ndim == 2 else samples
    peak, share = dominant_frequency(mono)
    return abs(peak - hz) <= 20 and share > 0.5


class ToneTrack(MediaStreamTrack):
    """A paced 48 kHz mono 440 Hz tone for ``seconds``, then silence; counts what it sent."""

    kind = "audio"

    def __init__(self, seconds: float, hz: float = TONE_HZ) -> None:
        super().__init__()
        self.tone_frames = int(seconds * SAMPLE_RATE / FRAME_SAMPLES)
        self.sent = 0
        self.tone_sent = 0
        self._hz = hz
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent * FRAME_SAMPLES / SAMPLE_RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        pts = self.sent * FRAME_SAMPLES
        if self.sent < self.tone_frames:
            t = (pts + np.arange(FRAME_SAMPLES)) / SAMPLE_RATE
            samples = (np.sin(2 * np.pi * self._hz * t) * 8000).astype(np.int16)
            self.tone_sent += 1
        else:
            samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.sent += 1
        return frame


@dataclass
class Received:
    """What came back: decoded frames (monotonic time, tone or not) and raw RTP arrivals."""

    times: list[float] = field(default_factory=list)
    tone: list[bool] = field(default_factory=list)
    rtp_times: list[float] = field(default_factory=list)  # before the jitter buffer

    @property
    def tone_frames(self) -> int:
        return sum(self.tone)

    def first_tone_at(self) -> float | None:
        return next((t for t, ok in zip(self.times, self.tone, strict=True) if ok), None)


class WhipError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


@dataclass
class Call:
    """One WHIP session from offer to DELETE."""

    base_url: str
    seconds: float = 5.0
    region: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # an API key or client secret: ``Authorization: Bearer`` on each call
    pc: RTCPeerConnection = field(init=False)
    track: ToneTrack = field(init=False)
    received: Received = field(default_factory=Received)
    answer: str = ""
    location: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    offered_at: float = 0.0
    connected_at: float | None = None
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Offer, POST, apply the answer. Raises ``WhipError`` on a non-201 answer."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = ToneTrack(self.seconds)
        self.pc.addTrack(self.track)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offered_at = time.monotonic()
        url = urljoin(self.base_url, "/v1/sessions")
        if self.region:
            url += f"?region={self.region}"
        status, headers, body = await asyncio.to_thread(
            http_request, "POST", url, self.pc.localDescription.sdp.encode(),
            {"Content-Type": "application/sdp", **self.headers, **bearer(self.token)},
        )
        if status != 201:
            raise WhipError(status, body.decode(errors="replace"))
        self.response_headers, self.answer = headers, body.decode()
        self.location = urljoin(self.base_url, headers["Location"])
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer, "answer"))
        for transceiver in self.pc.getTransceivers():
            self._record_rtp(transceiver.receiver)

    def _record_rtp(self, receiver: Any) -> None:
        """Note each RTP packet's arrival before aiortc's jitter buffer holds it back.

        Wraps aiortc 1.16's ``RTCRtpReceiver._handle_rtp_packet`` (looked up per packet by the
        DTLS transport's router), so network-level arrival can be told from playout.
        """
        handle = receiver._handle_rtp_packet
        times = self.received.rtp_times

        async def recording(packet: Any, arrival_time_ms: int) -> None:
            times.append(time.monotonic())
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = recording

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.received.times.append(time.monotonic())
            self.received.tone.append(isinstance(frame, AudioFrame) and is_tone(frame))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connected_at is None:
            if self.pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise TimeoutError(f"not connected: {self.pc.connectionState}")
            await asyncio.sleep(0.01)

    async def play(self, settle: float = 0.5, limit: float = 5.0) -> None:
        """Wait until the tone has been sent and its echo stopped arriving (for ``settle`` s).

        Late frames count as echoed: this measures loss; latency is measured separately.
        """
        while self.track.tone_sent < self.track.tone_frames:
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + limit
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.received.tone_frames != seen:
                seen, quiet_since = self.received.tone_frames, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """DELETE the session and close the peer connection."""
        if self.location:
            await asyncio.to_thread(http_request, "DELETE", self.location, b"",
                                    bearer(self.token))
        if hasattr(self, "pc"):  # start() may have failed before it made one
            await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()

    def echo_ratio(self) -> float:
        """Echoed tone frames / tone frames sent."""
        return self.received.tone_frames / max(1, self.track.tone_sent)


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (RFC 6750 §2.1), or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def mint_client_secret(base_url: str, api_key: str, seconds: int = 600) -> dict[str, Any]:
    """``POST /v1/client_secrets`` with ``api_key``: ``{"value", "expires_at"}`` (what a server
    hands a browser)."""
    body = json.dumps({"expires_after": {"seconds": seconds}}).encode()
    status, _, raw = http_request("POST", urljoin(base_url, "/v1/client_secrets"), body,
                                  {"Content-Type": "application/json", **bearer(api_key)})
    if status != 200:
        raise WhipError(status, raw.decode(errors="replace"))
    return dict(json.loads(raw))


def http_request(
    method: str, url: str, body: bytes, headers: dict[str, str], timeout: float = 15.0
) -> tuple[int, dict[str, str], bytes]:
    """Blocking HTTP request returning (status, headers, body) for any status."""
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def get_json(url: str, token: str | None = None) -> dict[str, object]:
    status, _, body = http_request("GET", url, b"", bearer(token))
    if status != 200:
        raise WhipError(status, body.decode(errors="replace"))
    return dict(json.loads(body))
