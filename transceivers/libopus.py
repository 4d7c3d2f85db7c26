"""libopus called directly (ctypes), for the transceiver's voice codec.

PyAV's ``CodecContext.encode`` runs every audio frame through a resampler graph of its own
(libopus has a fixed frame size, so PyAV re-chunks), ~27 % of the encode's cost for a frame that
is already 20 ms of s16 mono 48 kHz; PyAV 18 has no switch for it. The library is the libopus
PyAV's wheel bundles (``av.libs/libopus-*.so*``, next to ``av``'s package), else the system's
(``ctypes.util.find_library("opus")``); ``load()`` returns None when neither loads and the
caller keeps PyAV.

Only the calls a voice encoder needs (``opus_encoder_create`` / ``opus_encode`` /
``opus_encoder_ctl``). With the ctl values FFmpeg's ``libopusenc`` applies (see ``Encoder``),
the packets are byte for byte PyAV's. (Decoding stays on PyAV: it has no such graph, and
libopus through ctypes measured no cheaper.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import logging
import os
from functools import cache

import av

logger = logging.getLogger(__name__)

OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002
OPUS_SET_MAX_BANDWIDTH = 4004
OPUS_SET_VBR = 4006
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_SET_DTX = 4016
OPUS_SET_VBR_CONSTRAINT = 4020
OPUS_SET_PHASE_INVERSION_DISABLED = 4046
MAX_PACKET = 4000  # bytes: libopus's recommended output buffer for one packet
# OPUS_SET_MAX_BANDWIDTH values (opus_defines.h): audio bandwidth 8, 12 and 20 kHz
BANDWIDTHS = {"wideband": 1103, "superwideband": 1104, "fullband": 1105}

_c_int_p = ctypes.POINTER(ctypes.c_int)


class OpusError(av.error.InvalidDataError):
    """A libopus call failed; an ``av.FFmpegError``, as PyAV's codec would raise, so aiortc's
    receivers treat it the same way."""

    def __init__(self, call: str, code: int, lib: ctypes.CDLL) -> None:
        reason = lib.opus_strerror(code).decode()
        super().__init__(errno.EINVAL, f"libopus {call}: {reason} ({code})")


def candidates() -> list[str]:
    """Where to look for libopus, in order: PyAV's bundled copy, then the system's."""
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(av.__file__))), "av.libs")
    found = sorted(glob.glob(os.path.join(libs, "libopus*.so*")))
    system = ctypes.util.find_library("opus")
    return found + ([system] if system else [])


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_get_version_string.argtypes = []
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, _c_int_p]
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encoder_destroy.restype = None
    lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_char_p, ctypes.c_int32]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encoder_ctl.restype = ctypes.c_int  # variadic: arguments passed as c_int
    return lib


def load_from(paths: list[str]) -> ctypes.CDLL | None:
    """The first of ``paths`` that loads as libopus with every symbol used here, else None."""
    for path in paths:
        try:
            return _bind(ctypes.CDLL(path))
        except (OSError, AttributeError) as exc:
            logger.info("libopus at %s not usable: %s", path, exc)
    return None


@cache
def load() -> ctypes.CDLL | None:
    """libopus (see ``candidates``), once per process; None when none loads."""
    lib = load_from(candidates())
    if lib is None:
        logger.warning("libopus not found: the transceiver's voice codec stays on PyAV")
    return lib


class Encoder:
    """One libopus encoder, configured as FFmpeg's ``libopusenc`` configures the voice encoder
    PyAV would open (``application=voip``, ``bit_rate``, FFmpeg's defaults for the rest:
    complexity 10, unconstrained VBR, no FEC, no DTX, 0 % expected loss, phase inversion on);
    ``complexity`` (0-10) and ``max_bandwidth`` (a ``BANDWIDTHS`` name) trade quality for CPU."""

    def __init__(self, lib: ctypes.CDLL, sample_rate: int, channels: int, bitrate: int,
                 complexity: int = 10, max_bandwidth: str = "fullband") -> None:
        self._lib = lib
        error = ctypes.c_int()
        handle = lib.opus_encoder_create(sample_rate, channels, OPUS_APPLICATION_VOIP,
                                         ctypes.byref(error))
        if not handle:
            raise OpusError("opus_encoder_create", error.value, lib)
        self._handle: ctypes.c_void_p | None = ctypes.c_void_p(handle)
        for request, value in ((OPUS_SET_BITRATE, bitrate), (OPUS_SET_COMPLEXITY, complexity),
                               (OPUS_SET_MAX_BANDWIDTH, BANDWIDTHS[max_bandwidth]),
                               (OPUS_SET_VBR, 1), (OPUS_SET_VBR_CONSTRAINT, 0),
                               (OPUS_SET_PACKET_LOSS_PERC, 0), (OPUS_SET_INBAND_FEC, 0),
                               (OPUS_SET_PHASE_INVERSION_DISABLED, 0), (OPUS_SET_DTX, 0)):
            code = lib.opus_encoder_ctl(self._handle, ctypes.c_int(request), ctypes.c_int(value))
            if code < 0:
                raise OpusError(f"opus_encoder_ctl({request})", code, lib)
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: int, samples: int) -> bytes:
        """One packet from ``samples`` interleaved s16 samples per channel at address ``pcm``."""
        size = self._lib.opus_encode(self._handle, pcm, samples, self._out, MAX_PACKET)
        if size < 0:
            raise OpusError("opus_encode", size, self._lib)
        return self._out.raw[:size]

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.opus_encoder_destroy(handle)
            self._handle = None
