"""The voice encoder's settings: CPU per 20 ms frame against what the caller hears.

A transceiver's CPU per echo call is mostly libopus (2026-12-01, AMD EPYC, 30 speech calls
under py-spy: encode and decode ~78 % of the process), so the encoder's knobs
(``TRANSCEIVER_OPUS_COMPLEXITY``, ``TRANSCEIVER_OPUS_BANDWIDTH``) decide how many calls a core
carries. This benchmark prices each setting on ``SPEECH`` (espeak-ng) as the transceiver's
own codec path runs it (``DirectOpusEncoder``, then ``VoiceOpusDecoder`` as the client would
decode it), and scores what comes out with PESQ (ITU-T P.862.2, wideband MOS-LQO: 1 bad to 4.64
transparent) against the speech that went in. PESQ hears 0-8 kHz only: it cannot tell the 8-11
kHz that wideband cuts from espeak-ng's 22 kHz voice, and it rewards wideband for spending the
same bits below 8 kHz; compare complexities within one bandwidth.

Each setting's encode cost is the least of interleaved rounds of this thread's CPU time
(the round other work on the machine disturbed least), beside the default setting measured in
the same rounds. "codec-only ceiling" is 20 ms of one core over encode + decode: the calls a
core would carry if nothing but the codec ran, an upper bound on any transceiver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from aiortc.jitterbuffer import JitterFrame
from av import AudioFrame, AudioResampler

from bench.capacity import TARGET_SESSIONS, speech_frames
from bench.common import Row
from transceivers import libopus, speedups
from transceivers.speedups import VoiceOpusSettings

FRAME_US = 20_000.0
PESQ_RATE = 16_000  # P.862.2 (wideband) scores 16 kHz audio
DEFAULT = VoiceOpusSettings()
# the default first (every ratio's baseline), then cheaper settings in the order they cost less
SETTINGS = (DEFAULT, VoiceOpusSettings(10, "wideband"), VoiceOpusSettings(5, "superwideband"),
            VoiceOpusSettings(5, "wideband"), VoiceOpusSettings(3, "wideband"),
            VoiceOpusSettings(1, "wideband"))
QUICK_SETTINGS = (DEFAULT, VoiceOpusSettings(5, "wideband"))


@dataclass(frozen=True)
class Priced:
    settings: VoiceOpusSettings
    encode_us: float  # per 20 ms frame, least of the rounds
    decode_us: float
    mos: float  # PESQ wideband MOS-LQO of the decoded speech against the input
    kbps: float

    @property
    def label(self) -> str:
        return f"complexity {self.settings.complexity} {self.settings.bandwidth}"


def _at_16k(frames: list[AudioFrame]) -> np.ndarray:
    resampler = AudioResampler(format="s16", layout="mono", rate=PESQ_RATE)
    chunks = []
    for frame in frames:
        frame.pts = None  # a plain sample stream: the resampler's own clock
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def mos(reference: np.ndarray, degraded: np.ndarray) -> float:
    """PESQ wideband MOS-LQO of ``degraded`` against ``reference`` (both 16 kHz)."""
    from pesq import pesq  # ITU-T P.862 reference code, compiled by the ``pesq`` package

    length = min(len(reference), len(degraded))
    return float(pesq(PESQ_RATE, reference[:length], degraded[:length], "wb"))


def _round_trip(settings: VoiceOpusSettings, frames: list[AudioFrame],
                lib: object) -> tuple[float, float, list[AudioFrame], int]:
    """(encode us/frame, decode us/frame, decoded frames, payload bytes) for one pass."""
    encoder = speedups.DirectOpusEncoder(lib, settings)  # type: ignore[arg-type]
    packets = []
    started = time.thread_time()
    for frame in frames:
        packets.append(encoder.encode(frame))
    encode = (time.thread_time() - started) / len(frames) * 1e6
    decoder = speedups.VoiceOpusDecoder()
    decoded: list[AudioFrame] = []
    started = time.thread_time()
    for payloads, timestamp in packets:
        for payload in payloads:
            decoded += decoder.decode(JitterFrame(payload, timestamp))
    decode = (time.thread_time() - started) / len(frames) * 1e6
    return encode, decode, decoded, sum(len(p) for ps, _ in packets for p in ps)


def price(settings_list: tuple[VoiceOpusSettings, ...], frames: list[AudioFrame],
          rounds: int) -> list[Priced]:
    lib = libopus.load()
    if lib is None:
        raise RuntimeError("no libopus: the transceiver's voice encoder is PyAV's")
    for i, frame in enumerate(frames):
        frame.pts = i * frame.samples
    reference = _at_16k(frames)
    costs: dict[VoiceOpusSettings, list[tuple[float, float]]] = {s: [] for s in settings_list}
    heard: dict[VoiceOpusSettings, tuple[list[AudioFrame], int]] = {}
    for _ in range(rounds):
        for settings in settings_list:  # interleaved: a slow moment hits every setting alike
            encode, decode, decoded, size = _round_trip(settings, frames, lib)
            costs[settings].append((encode, decode))
            heard[settings] = (decoded, size)
    seconds = len(frames) * FRAME_US / 1e6
    return [Priced(s, min(e for e, _ in costs[s]), min(d for _, d in costs[s]),
                   mos(reference, _at_16k(heard[s][0])), heard[s][1] * 8 / seconds / 1000)
            for s in settings_list]


def rows(priced: list[Priced]) -> list[Row]:
    base = priced[0]
    table: list[Row] = []
    for p in priced:
        ceiling = FRAME_US / (p.encode_us + p.decode_us)
        table += [
            Row(f"voice: encode, {p.label}", p.encode_us, "us/frame", baseline=base.encode_us,
                ratio=p.encode_us / base.encode_us,
                note=f"decode {p.decode_us:.0f} us; {p.kbps:.1f} kbit/s; baseline: "
                     f"{base.label} (the default)"),
            Row(f"voice: PESQ-WB, {p.label}", p.mos, "MOS", baseline=base.mos,
                ratio=p.mos / base.mos, note="P.862.2 MOS-LQO of the decoded speech; hears "
                                             "0-8 kHz only"),
            Row(f"voice: codec-only ceiling, {p.label}", ceiling, "calls/core",
                target=f">= {TARGET_SESSIONS}", met=ceiling >= TARGET_SESSIONS,
                note="20 ms / (encode + decode): no transceiver with this codec setting "
                     "carries more"),
        ]
    return table


def run(quick: bool) -> list[Row]:
    frames = speech_frames()
    if quick:
        return rows(price(QUICK_SETTINGS, frames[:150], rounds=1))
    return rows(price(SETTINGS, frames, rounds=5))
