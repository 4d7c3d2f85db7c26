"""Hot-path replacements for aiortc code that costs a transceiver CPU per session.

``aiortc.rtcrtpsender`` calls ``rtp.compute_audio_level_dbov`` on every audio frame it sends.
Stock aiortc 1.16 runs a per-sample Python loop over the frame's whole plane buffer (for a frame
from its Opus decoder, which is what the echo agent sends back, 23,040 bytes per 20 ms frame):
measured 935 us per frame, about half of a transceiver's CPU per echo session. The version
below computes the same RFC 6465 Appendix A level in ~10 us with numpy, ~1.5 us with the sum of
squares in C (``transceivers/_media.c``, used where it is built).

aiortc's Opus codec is stereo both ways (decoder output and a 96 kbit/s stereo encoder). A voice
session needs one channel: ``VoiceOpusEncoder`` / ``VoiceOpusDecoder`` run libopus mono (the
SDP's mandatory ``opus/48000/2`` rtpmap is unchanged; a mono Opus stream is valid under it, RFC
7587 section 7). Measured here: encode 213 -> 119 us, decode 54 -> 42 us per 20 ms frame.
``TRANSCEIVER_MONO_OPUS=0`` keeps aiortc's stereo codec (for same-run comparisons).

An audio ``RTCRtpSender`` hands each 20 ms frame to the default thread pool to encode it and
hops back to the event loop for the result (``run_in_executor``): two thread wake-ups per frame
for ~0.1 ms of libopus work. ``InlineEncodeLoop`` runs the audio encoder inline on the event
loop instead (``TRANSCEIVER_INLINE_ENCODE=0`` keeps the hop; video senders always keep it).

An ``RTCRtpReceiver`` decodes on a thread of its own: each complete frame goes through a
``queue.Queue`` to that thread, and each decoded frame comes back by
``run_coroutine_threadsafe`` (a concurrent future, a self-pipe wake-up and a task per frame).
``InlineDecodeQueue`` stands in for an audio receiver's queue and decodes as the frame is put,
on the event loop, straight into the track's queue; the receiver's thread then exits at once
(``TRANSCEIVER_INLINE_DECODE=0`` keeps the thread; video receivers always keep it). The agent
still receives decoded audio frames, in the same order.

``DirectOpusEncoder`` is the mono voice encoder on libopus called through ctypes
(``transceivers/libopus.py``) instead of PyAV's ``CodecContext``, whose ``encode`` runs a
resampler graph of its own on every frame: same libopus, same settings, the same packets byte
for byte and the same RTP timestamps. Used when libopus loads (PyAV's bundled copy, else the
system's), else PyAV; ``TRANSCEIVER_DIRECT_OPUS=0`` keeps PyAV. Decoding stays on PyAV: libopus
through ctypes measured no cheaper (PyAV's decode has no such graph; making the ``AudioFrame``
costs what PyAV's wrapping did).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import numpy as np
from aiortc import codecs, rtp
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.opus import SAMPLE_RATE, SAMPLES_PER_FRAME, TIME_BASE, OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import convert_timebase
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler, CodecContext
from av.frame import Frame
from av.packet import Packet

from transceivers import libopus

logger = logging.getLogger(__name__)

MAX_SAMPLE = 32767.0
MIN_LEVEL = -127  # RFC 6465 section 3: -127 dBov is the quietest level
MAX_LEVEL = 0
VOICE_BITRATE = 32_000  # libopus mono voice (RFC 7587 section 3.1.1: 24-32 kbit/s fullband speech)


def audio_level_dbov(frame: AudioFrame) -> int:
    """RFC 6465 Appendix A audio level of ``frame`` (s16 samples), as aiortc computes it.

    Over the frame's own samples: aiortc sums its plane's whole buffer, which libav pads (a
    decoded 20 ms mono frame: 960 samples in a 5,760-sample buffer; the padding is zeros, so the
    level is the same)."""
    values = frame.samples * (1 if frame.format.is_planar else frame.layout.nb_channels)
    energy = _energy(frame.planes[0], values)
    rms = math.sqrt(energy / (frame.samples * MAX_SAMPLE * MAX_SAMPLE))
    if rms <= 0:
        return MIN_LEVEL
    return round(min(max(20 * math.log10(rms), MIN_LEVEL), MAX_LEVEL))


def numpy_energy(plane: Any, count: int) -> int:
    """Sum of squares of the first ``count`` int16 samples of ``plane``."""
    # Integer maths on purpose: a float64 np.dot goes to BLAS, whose worker threads spin and
    # cost more CPU than the loop this replaces (measured: 5 echo sessions took a whole core).
    samples = np.frombuffer(memoryview(plane), dtype=np.int16, count=count).astype(np.int64)
    return int(samples.dot(samples))


try:  # the same sum in C (transceivers/_media.c): ~10 -> ~1 us a frame
    from transceivers._media import energy as _energy
except ImportError:  # not built: numpy serves
    _energy = numpy_energy


class VoiceResampler:
    """The voice encoder's resampler (to s16 mono 48 kHz, 20 ms frames), which hands a frame
    already in that shape (every frame the echo agent returns: it is what ``VoiceOpusDecoder``
    makes) straight to the encoder: the libav filter graph it would pass through copies it out
    unchanged (same samples, same ``pts``) at ~15 % of the encoder's own cost. From the first
    frame of another shape on, every frame goes through a real resampler, which may hold back
    samples between frames."""

    def __init__(self) -> None:
        self._resampler: AudioResampler | None = None

    def resample(self, frame: AudioFrame) -> list[AudioFrame]:
        if self._resampler is None:
            time_base = frame.time_base  # its parts: a Fraction's == costs ~3 us
            if (frame.format.name == "s16" and frame.layout.name == "mono"
                    and frame.sample_rate == SAMPLE_RATE and frame.samples == SAMPLES_PER_FRAME
                    and time_base is not None and time_base.numerator == TIME_BASE.numerator
                    and time_base.denominator == TIME_BASE.denominator):
                return [frame]
            self._resampler = AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=SAMPLES_PER_FRAME
            )
        return self._resampler.resample(frame)


@dataclass(frozen=True)
class VoiceOpusSettings:
    """The voice encoder's CPU-for-quality knobs (``TRANSCEIVER_OPUS_COMPLEXITY``, 0-10, and
    ``TRANSCEIVER_OPUS_BANDWIDTH``, a ``libopus.BANDWIDTHS`` name). The defaults are FFmpeg's
    and libopus's (complexity 10, fullband). Encoding speech is most of a transceiver's CPU per
    call: on the 2026-12-01 AMD EPYC, 184 us per 20 ms frame at the defaults, 161 wideband, 139
    at complexity 5 and 121 at both (libwebrtc itself uses complexity 9 on desktops and 5 on
    phones; a text-to-speech voice of 16 kHz has nothing above wideband's 8 kHz to lose)."""

    complexity: int = 10
    bandwidth: str = "fullband"

    def __post_init__(self) -> None:
        if not 0 <= self.complexity <= 10:
            raise ValueError(f"Opus complexity {self.complexity}: 0-10")
        if self.bandwidth not in libopus.BANDWIDTHS:
            raise ValueError(f"Opus bandwidth {self.bandwidth!r}: one of "
                             f"{', '.join(libopus.BANDWIDTHS)}")

    @classmethod
    def from_env(cls) -> VoiceOpusSettings:
        return cls(int(os.environ.get("TRANSCEIVER_OPUS_COMPLEXITY", "10")),
                   os.environ.get("TRANSCEIVER_OPUS_BANDWIDTH", "fullband"))


OPUS_CUTOFF_HZ = {"wideband": 8000, "superwideband": 12000, "fullband": 20000}  # libopusenc's


class VoiceOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder, mono at ``VOICE_BITRATE`` (input frames of any layout)."""

    def __init__(self, settings: VoiceOpusSettings | None = None) -> None:
        super().__init__()
        settings = settings or VoiceOpusSettings()
        self.codec = CodecContext.create("libopus", "w")
        self.codec.bit_rate = VOICE_BITRATE
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.options = {"application": "voip",
                              "compression_level": str(settings.complexity),
                              **({} if settings.bandwidth == "fullband" else
                                 {"cutoff": str(OPUS_CUTOFF_HZ[settings.bandwidth])})}
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = TIME_BASE
        self.resampler = VoiceResampler()  # type: ignore[assignment]


class VoiceOpusDecoder(OpusDecoder):
    """aiortc's Opus decoder with mono output (libopus downmixes a stereo stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.codec = CodecContext.create("libopus", "r")
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = SAMPLE_RATE


class DirectOpusEncoder(Encoder):
    """``VoiceOpusEncoder`` on libopus directly: the same packets (mono, ``VOICE_BITRATE``,
    ``voip``) and the same RTP timestamps, without PyAV's per-frame resampler graph.

    The timestamps as aiortc's encoder gets them from FFmpeg: a packet's is where the audio it
    decodes to began, which libopus's lookahead (312 samples, less than a frame) puts in the
    previous frame: the end of the previous frame (its ``pts`` plus its samples), less the
    first frame's ``pts`` (so 0 for the first packet, and a jump in ``pts`` shows one packet
    later). A frame without ``pts`` counts on from the previous one."""

    def __init__(self, lib: ctypes.CDLL, settings: VoiceOpusSettings | None = None) -> None:
        settings = settings or VoiceOpusSettings()
        self._opus = libopus.Encoder(lib, SAMPLE_RATE, 1, VOICE_BITRATE,
                                     settings.complexity, settings.bandwidth)
        self.resampler = VoiceResampler()
        self._first_pts: int | None = None
        self._end = 0  # pts just past the previous frame

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, AudioFrame)
        assert frame.format.name == "s16"
        assert frame.layout.name in ["mono", "stereo"]
        payloads = []
        timestamp = None
        for chunk in self.resampler.resample(frame):  # 20 ms each
            pts = self._end if chunk.pts is None else chunk.pts
            if timestamp is None:
                if self._first_pts is None:
                    self._first_pts = self._end = pts
                timestamp = self._end - self._first_pts
            self._end = pts + chunk.samples
            payloads.append(self._opus.encode(chunk.planes[0].buffer_ptr, chunk.samples))
        if timestamp is None:  # the resampler holds the samples back
            return [], None  # type: ignore[return-value]  # aiortc's encoder contract
        return payloads, timestamp

    def pack(self, packet: Packet) -> tuple[list[bytes], int]:
        assert packet.pts is not None and packet.time_base is not None
        return [bytes(packet)], convert_timebase(packet.pts, packet.time_base, TIME_BASE)


_direct_lib: ctypes.CDLL | None = None  # libopus for the direct codec (None: PyAV), by install
_opus_settings = VoiceOpusSettings()  # by install


def get_voice_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    """``aiortc.codecs.get_encoder`` with the mono Opus encoder."""
    if codec.mimeType.lower() == "audio/opus":
        if _direct_lib is not None:
            return DirectOpusEncoder(_direct_lib, _opus_settings)
        return VoiceOpusEncoder(_opus_settings)
    return codecs.get_encoder(codec)


def get_voice_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    """``aiortc.codecs.get_decoder`` with the mono Opus decoder."""
    if codec.mimeType.lower() == "audio/opus":
        return VoiceOpusDecoder()
    return codecs.get_decoder(codec)


class InlineEncodeLoop:
    """The event loop as an audio ``RTCRtpSender`` sees it: ``run_in_executor`` runs the call
    inline and returns a finished future; everything else is the real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run_in_executor(self, executor: Any, func: Callable[..., Any],
                        *args: Any) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # delivered to the awaiting sender, as the pool would
            future.set_exception(exc)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


_stock_sender_init = aiortc.rtcrtpsender.RTCRtpSender.__init__


def _inline_sender_init(self: aiortc.rtcrtpsender.RTCRtpSender, *args: Any,
                        **kwargs: Any) -> None:
    _stock_sender_init(self, *args, **kwargs)
    if self.kind == "audio":
        self._RTCRtpSender__loop = InlineEncodeLoop(self._RTCRtpSender__loop)  # type: ignore[attr-defined]


class InlineDecodeQueue:
    """What an audio ``RTCRtpReceiver`` takes for its decoder queue: ``put`` decodes the frame
    at once (the decoder aiortc's thread would use, picked the same way) and hands the decoded
    frames to the receiver's track; ``None`` ends the track, as the thread would."""

    def __init__(self, receiver: aiortc.rtcrtpreceiver.RTCRtpReceiver) -> None:
        self._receiver = receiver
        self._codec: RTCRtpCodecParameters | None = None
        self._codec_name: str | None = None
        self._decoder: Decoder | None = None

    def put(self, task: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        track = self._receiver._track
        assert track is not None, "aiortc starts decoding only once the track exists"
        if task is None:
            self._decoder = self._codec = None
            track._queue.put_nowait(None)
            return
        codec, encoded_frame = task
        decoder = self._decoder
        if decoder is None or codec is not self._codec:  # identity first: ``name`` parses
            if decoder is None or codec.name != self._codec_name:
                decoder = self._decoder = aiortc.rtcrtpreceiver.get_decoder(codec)
                self._codec_name = codec.name
            self._codec = codec
        try:
            frames = decoder.decode(encoded_frame)
        except av.FFmpegError as exc:  # keep the decoder state, as aiortc's thread does
            logger.warning("audio receiver failed to decode %s frame: %s", codec.name, exc)
            self._receiver._RTCRtpReceiver__decoder_error.set()  # type: ignore[attr-defined]
            return
        for frame in frames:
            track._queue.put_nowait(frame)


_stock_receiver_init = aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__
_stock_decoder_worker = aiortc.rtcrtpreceiver.decoder_worker


def _inline_receiver_init(self: aiortc.rtcrtpreceiver.RTCRtpReceiver, kind: str,
                          *args: Any, **kwargs: Any) -> None:
    _stock_receiver_init(self, kind, *args, **kwargs)
    if kind == "audio":
        self._RTCRtpReceiver__decoder_queue = InlineDecodeQueue(self)  # type: ignore[attr-defined]


def _decoder_worker(loop: asyncio.AbstractEventLoop, input_q: Any, *args: Any) -> None:
    """aiortc's decoder thread, which has nothing to do for a receiver that decodes inline."""
    if not isinstance(input_q, InlineDecodeQueue):
        _stock_decoder_worker(loop, input_q, *args)


def mono_opus_enabled() -> bool:
    return os.environ.get("TRANSCEIVER_MONO_OPUS", "1") != "0"


def inline_encode_enabled() -> bool:
    return os.environ.get("TRANSCEIVER_INLINE_ENCODE", "1") != "0"


def inline_decode_enabled() -> bool:
    return os.environ.get("TRANSCEIVER_INLINE_DECODE", "1") != "0"


def direct_opus_enabled() -> bool:
    return os.environ.get("TRANSCEIVER_DIRECT_OPUS", "1") != "0"


def install(mono_opus: bool | None = None, inline_encode: bool | None = None,
            inline_decode: bool | None = None, direct_opus: bool | None = None) -> None:
    """Make aiortc's RTP senders use ``audio_level_dbov`` and, unless switched off (arguments
    False, defaults ``TRANSCEIVER_MONO_OPUS`` / ``TRANSCEIVER_INLINE_ENCODE`` /
    ``TRANSCEIVER_INLINE_DECODE`` / ``TRANSCEIVER_DIRECT_OPUS``), the mono voice Opus codec
    (on libopus directly when it loads, with ``VoiceOpusSettings.from_env``: ``ValueError`` on
    a bad ``TRANSCEIVER_OPUS_*``), the inline audio encoder and the inline audio decoder
    (idempotent)."""
    global _direct_lib, _opus_settings
    _opus_settings = VoiceOpusSettings.from_env()
    rtp.compute_audio_level_dbov = audio_level_dbov
    direct = direct_opus_enabled() if direct_opus is None else direct_opus
    _direct_lib = libopus.load() if direct else None
    inline = inline_encode_enabled() if inline_encode is None else inline_encode
    aiortc.rtcrtpsender.RTCRtpSender.__init__ = (  # type: ignore[method-assign]
        _inline_sender_init if inline else _stock_sender_init)
    decode = inline_decode_enabled() if inline_decode is None else inline_decode
    aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__ = (  # type: ignore[method-assign]
        _inline_receiver_init if decode else _stock_receiver_init)
    aiortc.rtcrtpreceiver.decoder_worker = _decoder_worker  # type: ignore[assignment]
    mono = mono_opus_enabled() if mono_opus is None else mono_opus
    aiortc.rtcrtpsender.get_encoder = get_voice_encoder if mono else codecs.get_encoder  # type: ignore[attr-defined]
    aiortc.rtcrtpreceiver.get_decoder = get_voice_decoder if mono else codecs.get_decoder  # type: ignore[attr-defined]
