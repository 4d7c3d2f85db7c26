"""The audio level (C sum of squares, or numpy) equals aiortc's for every kind of frame a
transceiver sends; the mono codec keeps a tone; audio is encoded and decoded on the event loop,
frames in order."""

import asyncio
import ctypes.util
import fractions
import queue
import threading
from collections.abc import Callable
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpTransceiver, codecs, rtp
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from av import AudioFrame

from transceivers import libopus, speedups

STOCK = rtp.compute_audio_level_dbov


def _frame(samples: np.ndarray, layout: str = "mono") -> AudioFrame:
    frame = AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.int16), format="s16",
                                    layout=layout)
    frame.sample_rate, frame.pts = 48_000, 0
    return frame


def _decoded(tone: AudioFrame) -> AudioFrame:
    payloads, timestamp = OpusEncoder().encode(tone)
    return OpusDecoder().decode(JitterFrame(payloads[0], timestamp))[0]


@pytest.mark.parametrize("amplitude", [0, 1, 100, 8000, 32767])
def test_matches_aiortc(amplitude: int) -> None:
    t = np.arange(960) / 48_000
    tone = _frame(np.sin(2 * np.pi * 440 * t) * amplitude)
    for frame in (tone, _decoded(tone)):
        assert speedups.audio_level_dbov(frame) == STOCK(frame)


def test_matches_aiortc_on_noise_and_stereo() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        noise = rng.integers(-32768, 32767, 1920)
        frame = _frame(noise, layout="stereo")
        assert speedups.audio_level_dbov(frame) == STOCK(frame)


def test_c_energy_is_built_and_equals_numpys() -> None:
    """``./dev`` builds transceivers/_media.c; its sum of squares is numpy's, extremes included."""
    from transceivers._media import energy

    assert speedups._energy is energy
    rng = np.random.default_rng(5)
    for samples in (np.full(960, -32768), np.full(1920, 32767), np.zeros(960),
                    rng.integers(-32768, 32767, 5760, endpoint=True)):
        data = samples.astype(np.int16).tobytes()
        for count in (0, 1, len(samples) // 2, len(samples)):
            assert energy(data, count) == speedups.numpy_energy(data, count)
    odd = memoryview(b"\x00" + np.arange(-500, 500, dtype=np.int16).tobytes())[1:]  # unaligned
    assert energy(odd, 1000) == speedups.numpy_energy(bytes(odd), 1000)
    with pytest.raises(ValueError, match="do not fit"):
        energy(b"\x00" * 10, 6)
    with pytest.raises(ValueError):
        energy(b"\x00" * 10, -1)


def test_numpy_energy_serves_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "_energy", speedups.numpy_energy)
    rng = np.random.default_rng(4)
    for _ in range(5):
        frame = _frame(rng.integers(-32768, 32767, 1920), layout="stereo")
        assert speedups.audio_level_dbov(frame) == STOCK(frame)


def _patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtp, "compute_audio_level_dbov", STOCK)
    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", codecs.get_encoder)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", codecs.get_decoder)
    monkeypatch.setattr(aiortc.rtcrtpsender.RTCRtpSender, "__init__",
                        aiortc.rtcrtpsender.RTCRtpSender.__init__)
    monkeypatch.setattr(aiortc.rtcrtpreceiver.RTCRtpReceiver, "__init__",
                        aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "decoder_worker",
                        aiortc.rtcrtpreceiver.decoder_worker)
    monkeypatch.setattr(speedups, "_direct_lib", speedups._direct_lib)


def test_install_patches_the_module_aiortc_senders_call(monkeypatch: pytest.MonkeyPatch) -> None:
    _patched(monkeypatch)
    monkeypatch.delenv("TRANSCEIVER_MONO_OPUS", raising=False)
    speedups.install()
    assert rtp.compute_audio_level_dbov is speedups.audio_level_dbov
    assert aiortc.rtcrtpsender.get_encoder is speedups.get_voice_encoder
    assert aiortc.rtcrtpreceiver.get_decoder is speedups.get_voice_decoder


def test_mono_opus_switch_keeps_aiortcs_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    _patched(monkeypatch)
    monkeypatch.setenv("TRANSCEIVER_MONO_OPUS", "0")
    speedups.install()
    assert aiortc.rtcrtpsender.get_encoder is codecs.get_encoder
    assert aiortc.rtcrtpreceiver.get_decoder is codecs.get_decoder


async def _per_kind(part: Callable[[RTCRtpTransceiver], object]) -> dict[str, object]:
    """``part`` of a fresh audio and a fresh video transceiver, by kind."""
    pc = RTCPeerConnection()
    try:
        return {kind: part(pc.addTransceiver(kind)) for kind in ("audio", "video")}
    finally:
        await pc.close()


async def _sender_loops() -> dict[str, object]:
    return await _per_kind(lambda t: t.sender._RTCRtpSender__loop)  # type: ignore[attr-defined]


async def test_audio_senders_encode_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    _patched(monkeypatch)
    monkeypatch.delenv("TRANSCEIVER_INLINE_ENCODE", raising=False)
    speedups.install()
    loops = await _sender_loops()
    assert isinstance(loops["audio"], speedups.InlineEncodeLoop)
    assert not isinstance(loops["video"], speedups.InlineEncodeLoop)
    monkeypatch.setenv("TRANSCEIVER_INLINE_ENCODE", "0")
    speedups.install()
    assert not isinstance((await _sender_loops())["audio"], speedups.InlineEncodeLoop)


async def test_inline_loop_returns_the_result_or_the_error() -> None:
    inline = speedups.InlineEncodeLoop(asyncio.get_running_loop())
    assert await inline.run_in_executor(None, divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        await inline.run_in_executor(None, divmod, 1, 0)
    assert inline.is_running() and inline.create_future().get_loop() is asyncio.get_running_loop()


LIBOPUS = libopus.load()
if LIBOPUS is None:
    raise RuntimeError("no libopus: PyAV's wheel bundles one (see transceivers/libopus.py)")


def DIRECT_ENCODER() -> speedups.DirectOpusEncoder:  # noqa: N802 (a codec class's stand-in)
    return speedups.DirectOpusEncoder(LIBOPUS)


def _peak_hz(frames: list[AudioFrame]) -> float:
    samples = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0]
                              for f in frames]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 48_000)[int(spectrum.argmax())])


@pytest.mark.parametrize(("encoder", "decoder"), [
    (speedups.VoiceOpusEncoder, OpusDecoder),  # what a caller decodes from us
    (OpusEncoder, speedups.VoiceOpusDecoder),  # a caller's stereo stream, decoded mono
    (speedups.VoiceOpusEncoder, speedups.VoiceOpusDecoder),
    (DIRECT_ENCODER, OpusDecoder),
    (DIRECT_ENCODER, speedups.VoiceOpusDecoder),  # the transceiver's codec, both ways
])
def test_voice_opus_keeps_a_tone(encoder: Callable[[], Any], decoder: Callable[[], Any]) -> None:
    enc, dec = encoder(), decoder()
    out: list[AudioFrame] = []
    t = np.arange(960) / 48_000
    for i in range(25):
        tone = _frame(np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000)
        tone.pts = i * 960
        payloads, timestamp = enc.encode(tone)
        for payload in payloads:
            out += dec.decode(JitterFrame(payload, timestamp))
    assert len(out) >= 24
    if decoder is speedups.VoiceOpusDecoder:
        assert out[0].layout.name == "mono"
    assert abs(_peak_hz(out[5:]) - 440) < 10


def test_voice_encoder_is_mono_voice_bitrate() -> None:
    enc = speedups.VoiceOpusEncoder()
    assert enc.codec.layout.name == "mono"
    assert enc.codec.bit_rate == speedups.VOICE_BITRATE


OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=111)


async def _decoder_queues() -> dict[str, object]:
    return await _per_kind(lambda t: t.receiver._RTCRtpReceiver__decoder_queue)  # type: ignore[attr-defined]


async def test_audio_receivers_decode_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    _patched(monkeypatch)
    monkeypatch.delenv("TRANSCEIVER_INLINE_DECODE", raising=False)
    speedups.install()
    queues = await _decoder_queues()
    assert isinstance(queues["audio"], speedups.InlineDecodeQueue)
    assert isinstance(queues["video"], queue.Queue)
    monkeypatch.setenv("TRANSCEIVER_INLINE_DECODE", "0")
    speedups.install()
    assert isinstance((await _decoder_queues())["audio"], queue.Queue)


async def test_inline_decode_feeds_the_track_in_order_and_ends_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _patched(monkeypatch)
    speedups.install(inline_decode=True)
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        receiver._track = aiortc.rtcrtpreceiver.RemoteStreamTrack("audio")
        decoders = threading.active_count()
        await receiver.receive(RTCRtpReceiveParameters(codecs=[OPUS]))
        inline = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
        enc, t = speedups.VoiceOpusEncoder(), np.arange(960) / 48_000
        for i in range(25):
            tone = _frame(np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000)
            tone.pts = i * 960
            payloads, timestamp = enc.encode(tone)
            inline.put((OPUS, JitterFrame(payloads[0], timestamp)))
        inline.put((OPUS, JitterFrame(b"\xff\xff\xff", 25 * 960)))  # undecodable: skipped
        assert receiver._RTCRtpReceiver__decoder_error.is_set()  # type: ignore[attr-defined]
        inline.put(None)
        out = [await receiver.track.recv() for _ in range(25)]
        assert [f.pts for f in out] == [i * 960 for i in range(25)]
        assert abs(_peak_hz(out[5:]) - 440) < 10
        with pytest.raises(MediaStreamError):
            await receiver.track.recv()
        await asyncio.sleep(0.05)  # the receiver's thread had nothing to do and is gone
        assert threading.active_count() <= decoders
    finally:
        await pc.close()


def _tones(count: int, channels: int = 1, samples: int = 960) -> list[AudioFrame]:
    """A 440 Hz tone with a little noise, in ``count`` frames; the pts skip 3 frames' worth
    half-way (a gap in what the agent returns)."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(count):
        t = (np.arange(samples) + i * samples) / 48_000
        mono = np.sin(2 * np.pi * 440 * t) * 8000 + rng.normal(0, 300, samples)
        frame = _frame(np.repeat(mono, channels), layout="stereo" if channels == 2 else "mono")
        frame.pts = 1000 + i * samples + (3 * samples if i >= count // 2 else 0)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(("channels", "samples"), [(1, 960), (2, 960), (1, 480), (2, 1440)])
def test_direct_encoder_sends_what_pyav_sends(channels: int, samples: int) -> None:
    """Same payloads byte for byte and the same RTP timestamps as the PyAV voice encoder, for
    frames the resampler passes through (mono 20 ms), converts (stereo) or re-chunks (10 and
    30 ms: some calls return no packet, ``([], None)``, as aiortc's contract has it)."""
    pyav, direct = speedups.VoiceOpusEncoder(), DIRECT_ENCODER()
    sent = 0
    for frame in _tones(40, channels, samples):
        expected = pyav.encode(frame)
        assert direct.encode(frame) == expected
        sent += len(expected[0])
    assert sent >= 40 * samples // 960 - 1


@pytest.mark.parametrize("settings", [
    speedups.VoiceOpusSettings(5, "wideband"), speedups.VoiceOpusSettings(9, "superwideband"),
    speedups.VoiceOpusSettings(0, "fullband")])
def test_cheaper_opus_settings_are_what_ffmpeg_would_send(
        settings: speedups.VoiceOpusSettings) -> None:
    """A lower complexity or bandwidth: the direct encoder still sends what PyAV's libopusenc
    sends with the matching options, and no packet codes more than the bandwidth allows (the
    TOC byte's configuration, RFC 6716 section 3.1)."""
    pyav = speedups.VoiceOpusEncoder(settings)
    direct = speedups.DirectOpusEncoder(LIBOPUS, settings)
    widest = {"wideband": 11, "superwideband": 13, "fullband": 15}[settings.bandwidth]
    celt_widest = {"wideband": 23, "superwideband": 27, "fullband": 31}[settings.bandwidth]
    for frame in _tones(40, 1, 960):
        expected = pyav.encode(frame)
        assert direct.encode(frame) == expected
        for payload in expected[0]:
            config = payload[0] >> 3
            assert config <= widest or 16 <= config <= celt_widest, (config, settings)


def test_opus_settings_come_from_the_environment_and_are_checked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert speedups.VoiceOpusSettings.from_env() == speedups.VoiceOpusSettings(10, "fullband")
    monkeypatch.setenv("TRANSCEIVER_OPUS_COMPLEXITY", "5")
    monkeypatch.setenv("TRANSCEIVER_OPUS_BANDWIDTH", "wideband")
    assert speedups.VoiceOpusSettings.from_env() == speedups.VoiceOpusSettings(5, "wideband")
    with pytest.raises(ValueError, match="0-10"):
        speedups.VoiceOpusSettings(11)
    monkeypatch.setenv("TRANSCEIVER_OPUS_BANDWIDTH", "narrow")
    with pytest.raises(ValueError, match="wideband, superwideband, fullband"):
        speedups.VoiceOpusSettings.from_env()


async def test_direct_codec_through_aiortcs_sender_and_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real aiortc call, both ends on the transceiver's codec as installed (libopus direct
    encoder): the receiving end gets the tone, mono, with RTP timestamps 20 ms apart."""
    _patched(monkeypatch)
    monkeypatch.delenv("TRANSCEIVER_DIRECT_OPUS", raising=False)
    speedups.install(mono_opus=True, inline_encode=True, inline_decode=True)
    assert isinstance(aiortc.rtcrtpsender.get_encoder(OPUS), speedups.DirectOpusEncoder)
    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    tones = iter(_tones(200))
    received: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()

    class Tone(MediaStreamTrack):
        kind = "audio"

        async def recv(self) -> AudioFrame:
            await asyncio.sleep(0.02)
            frame = next(tones)
            frame.pts = frame.pts - 1000  # continuous: the receiver's timestamps are checked
            frame.time_base = fractions.Fraction(1, 48_000)
            return frame

    callee.on("track", received.put_nowait)
    try:
        caller.addTrack(Tone())
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        track = await asyncio.wait_for(received.get(), 10)
        out = [await asyncio.wait_for(track.recv(), 10) for _ in range(40)]
    finally:
        await caller.close()
        await callee.close()
    assert all(f.layout.name == "mono" and f.sample_rate == 48_000 for f in out)
    assert np.diff([f.pts for f in out]).tolist() == [960] * 39
    assert abs(_peak_hz(out[10:]) - 440) < 10


def test_direct_opus_falls_back_to_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a loadable libopus (a missing file, a library without Opus's symbols) or with
    ``TRANSCEIVER_DIRECT_OPUS=0``, the voice encoder is PyAV's; with it, libopus direct."""
    _patched(monkeypatch)
    libc = ctypes.util.find_library("c")
    assert libc is not None
    assert libopus.load_from(["/nonexistent/libopus.so.0", libc]) is None
    assert libopus.load_from([libc, *libopus.candidates()]) is not None
    assert "av.libs" in libopus.candidates()[0]  # PyAV's bundled copy first
    monkeypatch.delenv("TRANSCEIVER_DIRECT_OPUS", raising=False)
    speedups.install(mono_opus=True)
    assert isinstance(aiortc.rtcrtpsender.get_encoder(OPUS), speedups.DirectOpusEncoder)
    monkeypatch.setenv("TRANSCEIVER_DIRECT_OPUS", "0")
    speedups.install(mono_opus=True)
    assert type(aiortc.rtcrtpsender.get_encoder(OPUS)) is speedups.VoiceOpusEncoder
    monkeypatch.delenv("TRANSCEIVER_DIRECT_OPUS")
    monkeypatch.setattr(libopus, "candidates", lambda: ["/nonexistent/libopus.so.0", libc])
    libopus.load.cache_clear()
    try:
        speedups.install(mono_opus=True)
    finally:
        libopus.load.cache_clear()
    assert type(aiortc.rtcrtpsender.get_encoder(OPUS)) is speedups.VoiceOpusEncoder
