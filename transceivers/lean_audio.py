"""An established audio stream's RTP without aiortc's per-packet objects (TRANSCEIVER_LEAN_AUDIO).

Measured under 40 echo calls (py-spy, 2026-12-01): beyond the codec, a transceiver spent ~155
us per echoed frame, of which a bare loop doing only what the frame needs (``bench/voice.py``,
``echo_floor``: receive, SRTP, decode, level, encode, SRTP, send) spends ~50. Most of the rest
is aiortc's generality, paid per packet: the router, the receiver's checks for video's work
(NACK, REMB, RTX), a coroutine chain per received packet; on the way out an ``RtpPacket``
serialized through the extension map, and three coroutines to the socket.

Receiving: ``AudioPath.take`` stands in for ``RTCDtlsTransport._handle_rtp_data`` and
``RTCRtpReceiver._handle_rtp_packet`` for packets of a stream aiortc has already routed to an
audio receiver (its SSRC in the router's table, its payload type one of the receiver's, not
RTX): the same statistics (RTCP receiver reports), jitter buffer, timestamp mapping and decoder
hand-off, on the ``RtpPacket`` aiortc's own parser makes, in one call from the mux's read
callback (``transceivers.lean_rtp``). Anything else, a stream's first packet included, takes
aiortc's path, which learns the route, and so does a packet aiortc's parser refuses. One
difference, invisible on the wire: the synchronization source's "last seen" time
(``getSynchronizationSources``) is refreshed once a second, not per packet.

Sending: ``run_rtp`` replaces ``RTCRtpSender._run_rtp`` for audio senders: the same frames,
packets, history (NACK retransmission), sender-report counters and header extensions (built
by ``HeaderWriter``, byte for byte what ``RtpPacket.serialize`` builds), protected and handed
to the selected ICE pair at once (``lean_rtp``'s ``direct_send``) instead of through
``RTCDtlsTransport._send_rtp``'s coroutines (its byte and packet counters kept). Video senders
keep aiortc's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import traceback
from collections.abc import Callable
from typing import Any

from aiortc import clock
from aiortc.codecs import depayload, is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket
from aiortc.utils import random32, uint16_add, uint32_add

logger = logging.getLogger(__name__)

RTP_HEADER = struct.Struct("!BBHII")
EXTENSION_HEADER = struct.Struct("!HH")
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 section 4.2
ACTIVE_REFRESH_MS = 1000  # how often the synchronization source's "last seen" is refreshed


class AudioPath:
    """The received-RTP path of one audio ``RTCRtpReceiver`` on DTLS transport ``dtls``."""

    def __init__(self, receiver: RTCRtpReceiver, dtls: Any) -> None:
        self.receiver = receiver
        self._router = dtls._rtp_router
        self._extensions = dtls._rtp_header_extensions_map
        self._streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        self._active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
        self._jitter = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        self._mapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
        self._decoder_error = receiver._RTCRtpReceiver__decoder_error  # type: ignore[attr-defined]
        self._refreshed: dict[int, int] = {}  # ssrc -> arrival ms its "last seen" was set
        self._codec: Any = None  # the last codec found not to be RTX

    @staticmethod
    def suits(receiver: RTCRtpReceiver) -> bool:
        """An audio receiver with none of the per-packet work only video does (NACK, REMB)."""
        return (receiver._RTCRtpReceiver__kind == "audio"  # type: ignore[attr-defined]
                and receiver._RTCRtpReceiver__nack_generator is None  # type: ignore[attr-defined]
                and receiver._RTCRtpReceiver__remote_bitrate_estimator is None)  # type: ignore[attr-defined]

    def take(self, data: bytes, arrival_ms: int) -> bool:
        """Handle unprotected RTP packet ``data`` as aiortc would; False (untouched) when it is
        not a routed packet of this receiver's audio, for aiortc's path to handle (a packet
        aiortc's parser refuses included: that path drops it)."""
        try:
            packet = RtpPacket.parse(data, self._extensions)
        except (ValueError, struct.error):
            return False
        receiver = self.receiver
        ssrc = packet.ssrc
        if (self._router.ssrc_table.get(ssrc) is not receiver
                or receiver not in self._router.payload_type_table.get(packet.payload_type, ())):
            return False
        codec = receiver._RTCRtpReceiver__codecs.get(packet.payload_type)  # type: ignore[attr-defined]
        if codec is None:
            return False
        if codec is not self._codec:  # is_rtx parses the MIME type: once per codec
            if is_rtx(codec):
                return False
            self._codec = codec
        if not receiver._enabled:
            return True
        if arrival_ms - self._refreshed.get(ssrc, -ACTIVE_REFRESH_MS) >= ACTIVE_REFRESH_MS:
            self._active[ssrc] = clock.current_datetime()
            self._refreshed[ssrc] = arrival_ms
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        try:
            packet._data = depayload(codec, packet.payload) if packet.payload else b""  # type: ignore[attr-defined]
        except ValueError:
            return True
        _, frame = self._jitter.add(packet)  # an audio buffer never asks for a picture (PLI)
        if self._decoder_error.is_set():
            self._decoder_error.clear()
        if frame is not None and receiver._RTCRtpReceiver__decoder_thread:  # type: ignore[attr-defined]
            frame.timestamp = self._mapper.map(frame.timestamp)
            receiver._RTCRtpReceiver__decoder_queue.put((codec, frame))  # type: ignore[attr-defined]
        return True


class HeaderWriter:
    """``RtpPacket.serialize`` for one audio sender's packets: no CSRC, no padding, header
    extensions mid (constant), abs-send-time and audio level where negotiated, in RFC 8285's
    one-byte form. ``None`` from ``for_map`` where the negotiated ids or the mid do not fit that
    form (aiortc then writes two-byte headers: its ``serialize`` serves)."""

    def __init__(self, mid: bytes, mid_id: int, send_time_id: int, level_id: int) -> None:
        self._mid = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid if mid_id and mid else b""
        self._send_time = send_time_id << 4 | 2
        self._level = level_id << 4
        self._send_time_id, self._level_id = send_time_id, level_id

    @classmethod
    def for_map(cls, extensions: HeaderExtensionsMap, mid: str | None) -> HeaderWriter | None:
        ids = extensions._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        encoded = (mid or "").encode("utf8")
        if mid is not None and ids.mid and not 0 < len(encoded) <= 16:
            return None  # an empty or long mid: two-byte form
        used = [i for i in (ids.mid if mid is not None else None, ids.abs_send_time,
                            ids.audio_level) if i]
        if any(i > 14 for i in used):
            return None
        return cls(encoded, ids.mid or 0, ids.abs_send_time or 0, ids.audio_level or 0)

    def write(self, payload_type: int, marker: int, sequence: int, timestamp: int, ssrc: int,
              send_time: int, level: int | None, payload: bytes) -> bytes:
        """The packet; ``send_time`` the 24-bit abs-send-time, ``level`` the -dBov level
        (0-127, no voice activity flag) or None."""
        body = self._mid
        if self._send_time_id:
            body += bytes((self._send_time, send_time >> 16 & 0xFF, send_time >> 8 & 0xFF,
                           send_time & 0xFF))
        if self._level_id and level is not None:
            body += bytes((self._level, level & 0x7F))
        if not body:
            return RTP_HEADER.pack(0x80, marker << 7 | payload_type, sequence, timestamp,
                                   ssrc) + payload
        body += b"\x00" * (-len(body) % 4)
        return (RTP_HEADER.pack(0x90, marker << 7 | payload_type, sequence, timestamp, ssrc)
                + EXTENSION_HEADER.pack(ONE_BYTE_PROFILE, len(body) >> 2) + body + payload)


def _sender(dtls: Any) -> Callable[[bytes], Any]:
    """Protect and send an RTP packet on ``dtls`` as ``RTCDtlsTransport._send_rtp`` does for
    RTP (it tells RTCP apart by the second byte, which for a marked packet of payload type 64-80
    reads as RTCP: an audio packet is always protected as RTP here), counting it once sent; the
    result is None when sent at once, else an awaitable (an ICE transport without
    ``direct_send``)."""

    def send(data: bytes) -> Any:
        if dtls._state is not State.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        data = dtls._tx_srtp.protect(data)
        ice_send = dtls.transport._send
        now = getattr(ice_send, "now", None)
        if now is not None:
            now(data)
            count(len(data))
            return None
        return counted(ice_send(data), len(data))

    def count(size: int) -> None:
        dtls._RTCDtlsTransport__tx_bytes += size
        dtls._RTCDtlsTransport__tx_packets += 1

    async def counted(sending: Any, size: int) -> None:
        await sending
        count(size)

    return send


async def run_rtp(sender: RTCRtpSender, codec: Any) -> None:
    """``RTCRtpSender._run_rtp`` for an audio sender (see the module's docstring)."""
    s: Any = sender  # aiortc's private state, by its mangled names
    s._RTCRtpSender__rtp_started.set()
    sequence = random_sequence_number()
    origin = random32()
    history: dict[int, RtpPacket] = s._RTCRtpSender__rtp_history
    extensions: HeaderExtensionsMap = s._RTCRtpSender__rtp_header_extensions_map
    mid: str | None = s._RTCRtpSender__mid
    writer = HeaderWriter.for_map(extensions, mid)
    ssrc, payload_type = s._ssrc, codec.payloadType
    transport, send = None, None
    try:
        while True:
            if not s._RTCRtpSender__track:
                await asyncio.sleep(0.02)
                continue
            encoded = await sender._next_encoded_frame(codec)
            if encoded is None:
                continue
            if sender.transport is not transport:
                transport = sender.transport
                send = _sender(transport)
            timestamp = uint32_add(origin, encoded.timestamp)
            level = None if encoded.audio_level is None else -encoded.audio_level
            last = len(encoded.payloads) - 1
            for i, payload in enumerate(encoded.payloads):
                marker = 1 if i == last else 0
                ntp = clock.current_ntp_time()
                packet = RtpPacket(payload_type, marker, sequence, timestamp, ssrc, payload)
                packet.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
                packet.extensions.mid = mid
                if level is not None:
                    packet.extensions.audio_level = (False, level)
                history[sequence % RTP_HISTORY_SIZE] = packet  # for NACKs, as aiortc keeps it
                data = (packet.serialize(extensions) if writer is None else
                        writer.write(payload_type, marker, sequence, timestamp, ssrc,
                                     packet.extensions.abs_send_time, level, payload))
                assert send is not None
                pending = send(data)
                if pending is not None:
                    await pending
                s._RTCRtpSender__ntp_timestamp = ntp
                s._RTCRtpSender__rtp_timestamp = timestamp
                s._RTCRtpSender__octet_count += len(payload)
                s._RTCRtpSender__packet_count += 1
                sequence = uint16_add(sequence, 1)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    except Exception:  # as aiortc: the loop must reach its end or stop() hangs
        logger.warning("audio RTP sender failed: %s", traceback.format_exc())
    if s._RTCRtpSender__track:
        s._RTCRtpSender__track.stop()
        s._RTCRtpSender__track = None
    s._RTCRtpSender__encoder = None
    s._RTCRtpSender__rtp_exited.set()


_stock_run_rtp = RTCRtpSender._run_rtp
_active = False


async def _run_rtp(self: RTCRtpSender, codec: Any) -> None:
    if _active and self.kind == "audio":
        await run_rtp(self, codec)
    else:
        await _stock_run_rtp(self, codec)


def enabled() -> bool:
    return os.environ.get("TRANSCEIVER_LEAN_AUDIO", "1") != "0"


def active() -> bool:
    """Whether sessions should route received audio through ``AudioPath``."""
    return _active


def install(on: bool | None = None) -> None:
    """Switch the lean audio path on (default ``TRANSCEIVER_LEAN_AUDIO``, on) or off: audio
    senders started from now on run ``run_rtp``, sessions attached from now on take received
    audio through ``AudioPath``."""
    global _active
    _active = enabled() if on is None else on
    RTCRtpSender._run_rtp = _run_rtp  # type: ignore[method-assign]
