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
the same rounds. "bare echo ceiling" is 20 ms of one core over the CPU per frame of
``echo_floor``, a loop that does only what an echo call must (receive, SRTP, decode, level,
encode, SRTP, send) for many calls interleaved: the calls a core would carry if a transceiver
cost nothing else, the bound any transceiver in Python with these codecs stays under, as the
C forwarder is the relay's.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import SRTP_PROFILES
from av import AudioFrame, AudioResampler
from pylibsrtp import Policy, Session

from bench.capacity import TARGET_SESSIONS, opus_payloads, speech_frames
from bench.common import Row
from transceivers import libopus, speedups
from transceivers.speedups import VoiceOpusSettings, audio_level_dbov

FRAME_US = 20_000.0
PESQ_RATE = 16_000  # P.862.2 (wideband) scores 16 kHz audio
DEFAULT = VoiceOpusSettings()
# the default first (every ratio's baseline), then cheaper settings in the order they cost less
SETTINGS = (DEFAULT, VoiceOpusSettings(10, "wideband"), VoiceOpusSettings(5, "superwideband"),
            VoiceOpusSettings(5, "wideband"), VoiceOpusSettings(3, "wideband"),
            VoiceOpusSettings(1, "wideband"))
QUICK_SETTINGS = (DEFAULT, VoiceOpusSettings(5, "wideband"))
FLOOR_SESSIONS = 40  # interleaved calls in the bare echo loop: the capacity ramp's range


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
    reference = _at_16k(frames)  # which leaves them without pts: the encoder counts on
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


class _Call:
    """One bare echo call: the client's SRTP, the transceiver's SRTP and codec."""

    def __init__(self, settings: VoiceOpusSettings, lib: object, ssrc: int) -> None:
        profile = SRTP_PROFILES[0]  # what aiortc negotiates first
        key = os.urandom(profile.key_length + profile.salt_length)
        back = os.urandom(profile.key_length + profile.salt_length)

        def session(material: bytes, ssrc_type: int) -> Session:
            return Session(Policy(key=material, ssrc_type=ssrc_type,
                                  srtp_profile=profile.libsrtp_profile))

        self.client_tx = session(key, Policy.SSRC_ANY_OUTBOUND)
        self.rx = session(key, Policy.SSRC_ANY_INBOUND)
        self.tx = session(back, Policy.SSRC_ANY_OUTBOUND)
        self.decoder = speedups.VoiceOpusDecoder()
        self.encoder = speedups.DirectOpusEncoder(lib, settings)  # type: ignore[arg-type]
        self.ssrc = ssrc


def echo_floor(settings: VoiceOpusSettings, sessions: int, frames: int) -> float:
    """CPU microseconds per echoed frame of a bare echo loop, the least any Python transceiver
    can spend: ``sessions`` calls interleaved (so each call's codec state is as cold in the
    caches as in a transceiver carrying them), and per frame only what the work needs: one
    ``recvfrom``, SRTP unprotect, Opus decode (the transceiver's decoder), the audio level,
    Opus encode (its encoder at ``settings``), a 12-byte RTP header, SRTP protect, one
    ``sendto``. No event loop, RTP objects, jitter buffer or statistics. The clients' packets
    (pre-encoded speech, as the capacity clients send) are sent between timed stretches."""
    lib = libopus.load()
    if lib is None:
        raise RuntimeError("no libopus: the transceiver's voice encoder is PyAV's")
    payloads = opus_payloads("speech")
    calls = [_Call(settings, lib, 0x1000 + i) for i in range(sessions)]
    inbound, outbound, client, sink = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                                       for _ in range(4))
    try:
        for sock in (inbound, sink):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.bind(("127.0.0.1", 0))
        here, there = inbound.getsockname(), sink.getsockname()
        sink.setblocking(False)
        spent = 0.0
        for n in range(frames):
            for call in calls:  # the clients speak: untimed
                header = struct.pack("!BBHII", 0x80, 111, n & 0xFFFF, n * 960, call.ssrc)
                client.sendto(call.client_tx.protect(header + payloads[n % len(payloads)]),
                              here)
            started = time.thread_time()
            for call in calls:
                data = inbound.recv(2048)
                packet = call.rx.unprotect(data)
                timestamp = struct.unpack_from("!I", packet, 4)[0]
                for frame in call.decoder.decode(JitterFrame(packet[12:], timestamp)):
                    audio_level_dbov(frame)
                    encoded, stamp = call.encoder.encode(frame)
                    header = struct.pack("!BBHII", 0x80, 111, n & 0xFFFF, stamp, call.ssrc)
                    outbound.sendto(call.tx.protect(header + encoded[0]), there)
            spent += time.thread_time() - started
            while True:  # the far end listens: untimed
                try:
                    sink.recv(2048)
                except BlockingIOError:
                    break
        return spent / (frames * sessions) * 1e6
    finally:
        for sock in (inbound, outbound, client, sink):
            sock.close()


def rows(priced: list[Priced], floors: dict[VoiceOpusSettings, float],
         sessions: int) -> list[Row]:
    base = priced[0]
    table: list[Row] = []
    for p in priced:
        table += [
            Row(f"voice: encode, {p.label}", p.encode_us, "us/frame", baseline=base.encode_us,
                ratio=p.encode_us / base.encode_us,
                note=f"decode {p.decode_us:.0f} us; {p.kbps:.1f} kbit/s; baseline: "
                     f"{base.label} (the default)"),
            Row(f"voice: PESQ-WB, {p.label}", p.mos, "MOS", baseline=base.mos,
                ratio=p.mos / base.mos, note="P.862.2 MOS-LQO of the decoded speech; hears "
                                             "0-8 kHz only"),
        ]
        floor = floors.get(p.settings)
        if floor is not None:
            ceiling = FRAME_US / floor
            reach = "can reach" if ceiling >= TARGET_SESSIONS else "cannot reach"
            table.append(Row(
                f"voice: bare echo ceiling, {p.label}", ceiling, "calls/core",
                note=f"20 ms / {floor:.0f} us per frame of a bare echo loop over {sessions} "
                     f"interleaved calls (one call, warm: encode + decode "
                     f"{p.encode_us + p.decode_us:.0f} us): no Python transceiver with this "
                     f"setting carries more; so one {reach} the >= {TARGET_SESSIONS} target"))
    return table


def run(quick: bool) -> list[Row]:
    frames = speech_frames()
    settings, sessions = (QUICK_SETTINGS, 5) if quick else (SETTINGS, FLOOR_SESSIONS)
    priced = price(settings, frames[:150] if quick else frames, rounds=1 if quick else 5)
    floors: dict[VoiceOpusSettings, float] = {}
    for _ in range(1 if quick else 3):  # rounds of every setting: machine drift hits all alike
        for s in settings:
            floor = echo_floor(s, sessions, 20 if quick else 100)
            floors[s] = min(floors.get(s, floor), floor)
    return rows(priced, floors, sessions)
