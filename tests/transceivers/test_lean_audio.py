"""The lean audio path against aiortc's: the same bytes out of a sender, the same statistics,
frames and jitter-buffer behaviour out of a receiver fed the same packets, odd ones included."""

from __future__ import annotations

import asyncio
import random
from fractions import Fraction
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import numpy as np
import pytest
from aiortc import RTCPeerConnection, clock
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from av import AudioFrame

from transceivers import lean_audio, speedups
from transceivers.lean_audio import AudioPath, HeaderWriter

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=111)
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def _map(ids: dict[str, int]) -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpSendParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    return extensions


@pytest.mark.parametrize("ids", [
    {MID_URI: 1, LEVEL_URI: 2}, {MID_URI: 4, LEVEL_URI: 9, SEND_TIME_URI: 3}, {LEVEL_URI: 14},
    {}, {MID_URI: 1}, {SEND_TIME_URI: 2}])
@pytest.mark.parametrize("mid", ["0", "audio", "a" * 16, None])
def test_header_writer_writes_what_aiortc_serializes(ids: dict[str, int],
                                                     mid: str | None) -> None:
    extensions = _map(ids)
    writer = HeaderWriter.for_map(extensions, mid)
    assert writer is not None
    rng = random.Random(7)
    for _ in range(200):
        level = rng.choice([None, 0, 1, 64, 127])
        packet = RtpPacket(111, rng.randint(0, 1), rng.getrandbits(16), rng.getrandbits(32),
                           rng.getrandbits(32), rng.randbytes(rng.randint(0, 200)))
        packet.extensions.abs_send_time = rng.getrandbits(24)
        packet.extensions.mid = mid
        if level is not None:
            packet.extensions.audio_level = (False, level)
        assert writer.write(packet.payload_type, packet.marker, packet.sequence_number,
                            packet.timestamp, packet.ssrc, packet.extensions.abs_send_time,
                            level, packet.payload) == packet.serialize(extensions)


@pytest.mark.parametrize(("ids", "mid"), [({MID_URI: 15, LEVEL_URI: 1}, "0"),
                                          ({MID_URI: 1}, "a" * 17), ({MID_URI: 1}, "")])
def test_header_writer_leaves_two_byte_headers_to_aiortc(ids: dict[str, int], mid: str) -> None:
    assert HeaderWriter.for_map(_map(ids), mid) is None


class _Frames(MediaStreamTrack):
    kind = "audio"

    def __init__(self, count: int) -> None:
        super().__init__()
        self._count, self._sent = count, 0

    async def recv(self) -> AudioFrame:
        if self._sent == self._count:
            self.stop()
            raise MediaStreamError
        t = (np.arange(960) + self._sent * 960) / 48_000
        frame = AudioFrame.from_ndarray(
            (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1), format="s16",
            layout="mono")
        frame.sample_rate, frame.pts = 48_000, self._sent * 960
        frame.time_base = Fraction(1, 48_000)
        self._sent += 1
        return frame


async def _sent_by(lean: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], Any]:
    """The RTP packets (before SRTP) an audio sender sends for 30 frames, on one path."""
    monkeypatch.setattr(aiortc.rtcrtpsender, "random_sequence_number", lambda: 65530)
    monkeypatch.setattr(lean_audio, "random_sequence_number", lambda: 65530)
    monkeypatch.setattr(aiortc.rtcrtpsender, "random32", lambda: 4_294_967_000)
    monkeypatch.setattr(lean_audio, "random32", lambda: 4_294_967_000)
    monkeypatch.setattr(clock, "current_ntp_time", lambda: 0x1234_5678_9ABC_DEF0)
    lean_audio.install(on=lean)
    sent: list[bytes] = []
    pc = RTCPeerConnection()
    try:
        dtls = pc.addTransceiver("audio").sender.transport

        async def capture(data: bytes) -> None:
            if not aiortc.rtp.is_rtcp(data):
                sent.append(data)

        monkeypatch.setattr(dtls, "_send_rtp", capture)
        monkeypatch.setattr(lean_audio, "_sender", lambda _dtls: lambda data: capture(data))
        sender = RTCRtpSender(_Frames(30), dtls)
        await sender.send(RTCRtpSendParameters(
            codecs=[OPUS], muxId="0", headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=2, uri=LEVEL_URI)]))
        for _ in range(200):
            if len(sent) == 30:
                break
            await asyncio.sleep(0.01)
        counters = (sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
                    sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
                    sender._RTCRtpSender__rtp_timestamp,  # type: ignore[attr-defined]
                    sorted(sender._RTCRtpSender__rtp_history))  # type: ignore[attr-defined]
        await sender.stop()
        return sent, counters
    finally:
        lean_audio.install(on=False)
        await pc.close()


async def test_audio_sender_sends_the_same_packets_on_both_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    speedups.install()
    stock, stock_counters = await _sent_by(False, monkeypatch)
    lean, lean_counters = await _sent_by(True, monkeypatch)
    assert len(stock) == 30 and lean == stock  # wrapping sequence numbers and timestamps
    assert lean_counters == stock_counters


def _packets(ssrc: int) -> list[bytes]:
    """Opus packets as a client sends them (sequence numbers wrapping), and odd ones: reordered,
    duplicated, with CSRCs, padding, header extensions, another payload type and SSRC,
    truncated or of another RTP version."""
    encoder = speedups.VoiceOpusEncoder()
    extensions = _map({MID_URI: 1, LEVEL_URI: 2})
    payloads = []
    for i in range(60):
        t = (np.arange(960) + i * 960) / 48_000
        frame = AudioFrame.from_ndarray(
            (np.sin(2 * np.pi * 300 * t) * 6000).astype(np.int16).reshape(1, -1), format="s16",
            layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * 960
        payloads.append(encoder.encode(frame)[0][0])

    def packet(i: int, **kw: Any) -> bytes:
        p = RtpPacket(kw.get("pt", 111), 0, (65500 + i) & 0xFFFF, (i * 960) & 0xFFFFFFFF,
                      kw.get("ssrc", ssrc), payloads[i % len(payloads)])
        p.csrc = kw.get("csrc", [])
        if kw.get("ext"):
            p.extensions.mid, p.extensions.audio_level = "0", (True, 30)
        p.padding_size = kw.get("padding", 0)
        return p.serialize(extensions)

    order = list(range(20)) + [21, 20, 22, 22, 23, 25, 24, 26] + list(range(27, 45))
    out = [packet(i, ext=i % 3 == 0, csrc=[7, 8] if i % 5 == 0 else [],
                  padding=4 if i % 7 == 0 else 0) for i in order]
    broken = bytearray(packet(49, ext=True))
    broken[16] = 0x1F  # the first one-byte element claims 16 bytes: truncated, aiortc drops it
    out += [packet(45, pt=0), packet(46)[:10], bytes([0x40]) + packet(47)[1:], bytes(broken),
            packet(48, ssrc=ssrc + 1), packet(49, ssrc=ssrc + 1)]
    return out


async def test_audio_receiver_path_matches_aiortcs(monkeypatch: pytest.MonkeyPatch) -> None:
    speedups.install(inline_decode=True)
    ssrc = 0xCAFE
    pcs = [RTCPeerConnection(), RTCPeerConnection()]  # a transport each: a router each
    try:
        receivers = []
        for pc in pcs:
            receiver = pc.addTransceiver("audio").receiver
            receiver._track = aiortc.rtcrtpreceiver.RemoteStreamTrack("audio")
            await receiver.receive(RTCRtpReceiveParameters(codecs=[OPUS]))
            router = receiver.transport._rtp_router
            router.payload_type_table[111] = {receiver}
            router.ssrc_table[ssrc] = receiver
            receivers.append(receiver)
        stock, lean = receivers
        assert AudioPath.suits(lean)
        path = AudioPath(lean, lean.transport)
        taken = 0
        for data in _packets(ssrc):
            await stock.transport._handle_rtp_data(data, arrival_time_ms=0)
            if path.take(data, 0):
                taken += 1
            else:  # what the sink does with a packet the path leaves: aiortc's path
                await lean.transport._handle_rtp_data(data, arrival_time_ms=0)
        assert taken >= 40
        out = []
        for receiver in receivers:
            stream = receiver._RTCRtpReceiver__remote_streams[ssrc]  # type: ignore[attr-defined]
            frames = []
            while not receiver.track._queue.empty():
                frames.append(receiver.track._queue.get_nowait())
            out.append((stream.packets_received, stream.base_seq, stream.max_seq, stream.cycles,
                        stream.packets_lost, sorted(receiver._RTCRtpReceiver__active_ssrc),  # type: ignore[attr-defined]
                        sorted(receiver._RTCRtpReceiver__remote_streams),  # type: ignore[attr-defined]
                        [(f.pts, bytes(f.planes[0])) for f in frames]))
        assert out[0] == out[1]
        assert len(out[0][-1]) >= 35
        assert out[0][-2] == [ssrc, ssrc + 1]  # aiortc routes a new SSRC of a known type
    finally:
        for pc in pcs:
            await pc.close()


def test_suits_audio_receivers_only() -> None:
    async def check() -> None:
        pc = RTCPeerConnection()
        try:
            assert AudioPath.suits(pc.addTransceiver("audio").receiver)
            assert not AudioPath.suits(pc.addTransceiver("video").receiver)
        finally:
            await pc.close()

    asyncio.run(check())
