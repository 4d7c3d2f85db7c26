"""Audio jitter-buffer tuning for the transceiver's receivers (opt-in, one call per track).

aiortc 1.16 gives every audio ``RTCRtpReceiver`` ``JitterBuffer(capacity=16, prefetch=4)``: a
frame is released only once 4 later frames are buffered, ~80 ms of 20 ms Opus frames on every
receiving hop, before the echo agent even sees the audio. The transceiver sits on loopback or a
data-centre LAN behind the relay; the client's own jitter buffer still absorbs network jitter on
the way back. So the transceiver's receivers release each frame as soon as the next packet shows
it is complete (``prefetch=0``: one frame, 20 ms, is the floor of aiortc's buffer design).
Capacity stays 16 (320 ms of reordering/loss window). Measured with ``python -m bench setup``.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamTrack

logger = logging.getLogger(__name__)

AUDIO_CAPACITY = 16  # packets; aiortc's audio default (power of two)
AUDIO_PREFETCH = 0  # frames held back before release; aiortc's audio default is 4
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # private in aiortc 1.16 (rtcrtpreceiver.py)


def tune_audio_receiver(
    pc: RTCPeerConnection, track: MediaStreamTrack, *, prefetch: int = AUDIO_PREFETCH
) -> bool:
    """Give the receiver of audio ``track`` a low-latency jitter buffer; False if not found.

    Call it from the ``track`` event, before any RTP arrives (aiortc fires it while applying the
    remote description).
    """
    if track.kind != "audio":
        return False
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is track and hasattr(receiver, _ATTRIBUTE):
            setattr(receiver, _ATTRIBUTE, JitterBuffer(capacity=AUDIO_CAPACITY, prefetch=prefetch))
            return True
    logger.warning("jitter buffer not tuned: aiortc receiver layout changed")
    return False
