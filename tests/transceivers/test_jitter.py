"""The transceiver's audio receive buffer: every frame out at once, in order, and one lost
packet costs that frame only (aiortc's buffer, shown beside it, falls 14 frames behind)."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from transceivers.jitter import AudioReleaseBuffer, tune_audio_receiver


def _feed(buffer: AudioReleaseBuffer | JitterBuffer,
          sequences: list[int]) -> list[tuple[int, int | None]]:
    """(sequence number in, frame out as its packet's index, or None) per packet."""
    out = []
    for sequence in sequences:
        packet = RtpPacket(111, 0, sequence & 0xFFFF, (sequence * 960) & 0xFFFFFFFF, 1)
        packet._data = bytes([sequence & 0xFF])  # type: ignore[attr-defined]
        pli, frame = buffer.add(packet)
        assert pli is False
        out.append((sequence, None if frame is None else frame.timestamp // 960))
    return out


def test_every_packet_is_released_as_it_arrives() -> None:
    out = _feed(AudioReleaseBuffer(), list(range(30)))
    assert out == [(s, s) for s in range(30)]


def test_one_lost_packet_costs_one_frame_not_a_stall() -> None:
    sequences = list(range(10)) + list(range(11, 40))
    ours = _feed(AudioReleaseBuffer(), sequences)
    assert ours == [(s, s) for s in sequences]
    # what aiortc's buffer (prefetch 0, as the transceiver had it) does with the same loss:
    # frame 9 never comes out, nothing for 14 packets, then each packet releases a frame 14
    # places behind it (280 ms late) for as long as the call lasts
    stock = dict(_feed(JitterBuffer(capacity=16, prefetch=0), sequences))
    assert all(stock[s] == s - 1 for s in range(1, 10))  # each frame a packet late (20 ms)
    assert 9 not in stock.values() and all(stock[s] is None for s in range(11, 25))
    assert all(stock[s] == s - 14 for s in range(25, 40))


def test_late_and_duplicated_packets_are_dropped_reordered_kept_in_order() -> None:
    out = _feed(AudioReleaseBuffer(), [0, 1, 3, 2, 3, 4, 4, 5])
    assert out == [(0, 0), (1, 1), (3, 3), (2, None), (3, None), (4, 4), (4, None), (5, 5)]


def test_sequence_numbers_wrap_and_a_restarted_stream_is_followed() -> None:
    wrapping = list(range(65530, 65542))  # & 0xFFFF: 65530 .. 65535, 0 .. 5
    out = _feed(AudioReleaseBuffer(), wrapping)
    assert [frame for _, frame in out] == [(s * 960 & 0xFFFFFFFF) // 960 for s in wrapping]
    restarted = _feed(AudioReleaseBuffer(), [5000, 5001, 1000, 1001, 1002])
    assert [frame for _, frame in restarted] == [5000, 5001, 1000, 1001, 1002]


def test_another_ssrc_is_a_new_stream_even_just_behind() -> None:
    buffer = AudioReleaseBuffer()
    assert [f for _, f in _feed(buffer, [100, 101, 102])] == [100, 101, 102]
    packet = RtpPacket(111, 0, 90, 90 * 960, 2)  # 12 behind, but a new sender: followed
    packet._data = b"x"  # type: ignore[attr-defined]
    assert buffer.add(packet)[1] is not None


def test_tune_gives_audio_receivers_the_release_buffer() -> None:
    async def check() -> None:
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("audio").receiver
            receiver._track = track = RemoteStreamTrack("audio")
            assert tune_audio_receiver(pc, track)
            assert isinstance(receiver._RTCRtpReceiver__jitter_buffer,  # type: ignore[attr-defined]
                              AudioReleaseBuffer)
            assert tune_audio_receiver(pc, track, prefetch=0)  # aiortc's, for comparisons
            assert isinstance(receiver._RTCRtpReceiver__jitter_buffer,  # type: ignore[attr-defined]
                              JitterBuffer)
            assert not tune_audio_receiver(pc, RemoteStreamTrack("video"))
        finally:
            await pc.close()

    asyncio.run(check())
