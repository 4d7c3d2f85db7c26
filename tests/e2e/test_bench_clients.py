"""The capacity benchmark's load generator against the real edge: its clients must be real
WebRTC callers (aiortc's ICE and DTLS, SRTP with the session's keys) whose speech comes back."""

from __future__ import annotations

import asyncio

import pytest
from av import AudioFrame
from av.codec import CodecContext
from av.packet import Packet

from bench.capacity import FRAME_S, Client, opus_payloads, speech_frames
from whip.launch import Edge

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")


def test_speech_is_seconds_of_voiced_opus() -> None:
    frames = speech_frames()
    assert len(frames) * FRAME_S > 5.0
    assert all(isinstance(f, AudioFrame) and f.samples == 960 for f in frames)
    payloads = opus_payloads("speech")
    decoder = CodecContext.create("libopus", "r")
    loud = 0
    for payload in payloads:
        for frame in decoder.decode(Packet(payload)):
            loud += int(abs(frame.to_ndarray()).max() > 1000)
    assert loud > len(payloads) // 3  # speech, not silence or a codec error


async def _echo(edge: Edge, sessions: int, seconds: float,
                lost: frozenset[int] = frozenset()) -> list[Client]:
    clients = [Client(edge.base_url, lost=lost) for _ in range(sessions)]
    try:
        for client in clients:
            await client.open()
        for _ in range(200):
            if all(c.pc.connectionState == "connected" for c in clients):
                break
            await asyncio.sleep(0.05)
        now = asyncio.get_running_loop().time()
        for i, client in enumerate(clients):
            client.start(now + i * FRAME_S / sessions)
        await asyncio.sleep(seconds)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return clients


def test_light_clients_get_their_speech_echoed_through_the_edge(edge: Edge) -> None:
    clients = asyncio.run(_echo(edge, sessions=3, seconds=3.0))
    for client in clients:
        assert client.sent >= 140
        # authentic (SRTP-verified) echoed packets, paced as sent: at most the first ~0.3 s
        # (ICE to first echo) and a little loss missing
        assert len(client.times) >= client.sent * 0.8, (len(client.times), client.sent)
        gaps = [b - a for a, b in zip(client.times, client.times[1:], strict=False)]
        assert sorted(gaps)[len(gaps) // 2] == pytest.approx(FRAME_S, abs=0.005)


def test_one_lost_packet_costs_its_own_frame_not_a_stall(edge: Edge) -> None:
    """A packet lost on the way in (the 60th): the echo misses that one frame and goes on at
    its pace. aiortc's audio buffer stopped releasing at the hole until 16 packets had piled up
    and stayed 14 frames (280 ms) behind (``tests/transceivers/test_jitter.py``)."""
    [client] = asyncio.run(_echo(edge, sessions=1, seconds=3.0, lost=frozenset({60})))
    assert client.sent >= 140
    gaps = [b - a for a, b in zip(client.times, client.times[1:], strict=False)]
    assert max(gaps[20:]) < 0.1, sorted(gaps)[-5:]  # one frame missing: ~40 ms, not ~300
    assert len(client.times) >= client.sent * 0.8, (len(client.times), client.sent)
