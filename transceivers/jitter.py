"""The transceiver's audio receive buffer (one per audio receiver, set from the track event).

aiortc 1.16 gives every audio ``RTCRtpReceiver`` ``JitterBuffer(capacity=16, prefetch=4)``: a
frame is released only once 4 later frames are buffered, ~80 ms of 20 ms Opus frames on every
receiving hop. With ``prefetch=0`` (what the transceiver used until 2026-12-01) it still
releases a frame only when the next packet shows it complete (20 ms), and one lost packet
stalls it: the frame before the hole is never released, nothing comes out until 16 packets have
piled up behind it, and from then on each packet releases the frame 14 places behind it. One
lost packet early in a call left the agent hearing the caller ~280 ms late for the rest of it
(``tests/transceivers/test_jitter.py`` shows it on aiortc's class).

Audio needs none of that assembly: an audio RTP packet carries whole frames (RFC 7587 section
4.2: one Opus packet per RTP packet; the same for G.711 and G.722). ``AudioReleaseBuffer``
releases each packet as it arrives, in order: a packet older than the last one released (late
or duplicated) is dropped, a hole is skipped (those frames are lost, as they would be later),
and a packet of another SSRC, or more than ``MAX_MISORDER`` behind (aiortc's rule), is a
restarted stream, released and followed.
The transceiver sits behind the relay on loopback or a data-centre LAN; the client's own jitter
buffer absorbs the network's jitter on the way back.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

AUDIO_CAPACITY = 16  # packets; aiortc's audio default (power of two), for comparisons
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # private in aiortc 1.16 (rtcrtpreceiver.py)


class AudioReleaseBuffer:
    """aiortc's ``JitterBuffer`` interface (``add``) for audio: every packet in order is a
    frame, released at once (see the module's docstring)."""

    def __init__(self) -> None:
        self._ssrc: int | None = None  # the stream followed
        self._next: int | None = None  # the sequence number expected next

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """(never a picture loss, the packet's frame or None when it is late)."""
        sequence = packet.sequence_number
        if packet.ssrc != self._ssrc:  # another stream (a restarted sender): followed from here
            self._ssrc, self._next = packet.ssrc, None
        if self._next is not None:
            behind = (self._next - sequence) & 0xFFFF
            if 0 < behind <= MAX_MISORDER:  # late, or a duplicate
                return False, None
        self._next = (sequence + 1) & 0xFFFF
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def tune_audio_receiver(
    pc: RTCPeerConnection, track: MediaStreamTrack, *, prefetch: int | None = None
) -> bool:
    """Give the receiver of audio ``track`` an ``AudioReleaseBuffer`` (``prefetch`` a number:
    aiortc's buffer holding that many frames back, for comparisons); False if not found.

    Call it from the ``track`` event, before any RTP arrives (aiortc fires it while applying the
    remote description).
    """
    if track.kind != "audio":
        return False
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is track and hasattr(receiver, _ATTRIBUTE):
            setattr(receiver, _ATTRIBUTE, AudioReleaseBuffer() if prefetch is None else
                    JitterBuffer(capacity=AUDIO_CAPACITY, prefetch=prefetch))
            return True
    logger.warning("jitter buffer not tuned: aiortc receiver layout changed")
    return False
