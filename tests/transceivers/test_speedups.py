"""The numpy audio level equals aiortc's for every kind of frame a transceiver sends."""

import numpy as np
import pytest
from aiortc import rtp
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from av import AudioFrame

from transceivers import speedups

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


def test_install_patches_the_module_aiortc_senders_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtp, "compute_audio_level_dbov", STOCK)
    speedups.install()
    assert rtp.compute_audio_level_dbov is speedups.audio_level_dbov
