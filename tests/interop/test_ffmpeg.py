"""FFmpeg's own WHIP muxer (the FFmpeg inside the pinned PyAV wheel) publishing to a real edge.

FFmpeg 8's WHIP muxer offers ``a=setup:passive`` (it is the DTLS server) and, built with GnuTLS
as in the PyAV wheel, signs with a certificate it generates on secp224r1
(``gnutls_sec_param_to_pk_bits(GNUTLS_PK_ECDSA, GNUTLS_SEC_PARAM_MEDIUM)`` = 224 bits). OpenSSL
4 (cryptography's wheel, under aiortc) has no TLS group for P-224, so it refuses that
certificate with illegal_parameter ("wrong curve"; RFC 8422 §5.1: the peer's curve must be one
the client offered). With a P-256 certificate (``cert_file``/``key_file``) FFmpeg publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import av
import av.logging
import numpy as np
import pytest

from bench.ffmpeg_setup import p256_certificate  # one P-256 certificate maker for both
from tests.interop.conftest import fresh_heartbeats
from whip.client import get_json
from whip.launch import Edge

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

RATE = 48_000
FRAME = 960  # 20 ms


def publish_tone(url: str, seconds: float, options: dict[str, str],
                 on_frame: Callable[[int], None] = lambda _: None) -> None:
    """Publish a paced 440 Hz Opus tone with FFmpeg's WHIP muxer; FFmpeg DELETEs on close."""
    container = av.open(url, mode="w", format="whip", options=options)
    try:
        stream = container.add_stream("libopus", rate=RATE)
        stream.layout = "stereo"
        started = time.monotonic()
        for index in range(int(seconds * RATE / FRAME)):
            t = (index * FRAME + np.arange(FRAME)) / RATE
            mono = (np.sin(2 * np.pi * 440.0 * t) * 8000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1),
                                               format="s16", layout="stereo")
            frame.sample_rate, frame.pts = RATE, index * FRAME
            for packet in stream.encode(frame):
                container.mux(packet)
            on_frame(index)
            time.sleep(max(0.0, started + (index + 1) * FRAME / RATE - time.monotonic()))
    finally:
        container.close()


def _resource_url(logs: list[tuple[int, str, str]]) -> str | None:
    for _level, _name, message in logs:
        if message.startswith("Dispose resource ") and message.rstrip().endswith(" ok"):
            return message.split()[2]
    return None


@pytest.mark.parametrize("flags", [
    {},  # offers a=setup:passive: the transceiver is the DTLS client
    {"whip_flags": "dtls_active"},  # offers a=setup:active: the transceiver is the DTLS server
], ids=["ffmpeg-passive", "ffmpeg-active"])
def test_ffmpeg_whip_publishes_a_tone_through_the_relay(interop_edge: Edge, tmp_path: Path,
                                                        flags: dict[str, str]) -> None:
    edge, url = interop_edge, urljoin(interop_edge.base_url, "/v1/sessions")
    before, _ = fresh_heartbeats(edge, time.time())
    connected: list[int] = []

    def check_connected(index: int) -> None:
        if index == 100:  # 2 s in: the transceiver's next heartbeat counts the session
            _, xcvr = fresh_heartbeats(edge, time.time())
            connected.append(xcvr.connected)

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)  # FFmpeg names the resource it DELETEs at VERBOSE
    try:
        with av.logging.Capture() as logs:
            publish_tone(url, 3.0, {**p256_certificate(tmp_path), **flags},
                         on_frame=check_connected)
    finally:
        av.logging.set_level(previous)
    after, _ = fresh_heartbeats(edge, time.time())
    assert connected == [1], f"transceiver heartbeat counted {connected} connected sessions"
    forwarded = after.counters["forwarded_in"] - before.counters["forwarded_in"]
    assert forwarded > 100, f"relay forwarded only {forwarded} packets from FFmpeg"
    resource = _resource_url(logs)
    assert resource is not None, "FFmpeg did not DELETE its session"
    state = get_json(urljoin(edge.base_url, resource))
    assert state["connected_at"] is not None
    assert state["state"] == "ended", state


def test_ffmpeg_default_p224_certificate_is_refused_with_the_reason_logged(
    interop_edge: Edge,
) -> None:
    """A known limitation (see the module docstring), pinned so a change of either side shows."""
    url = urljoin(interop_edge.base_url, "/v1/sessions")
    with pytest.raises(OSError):
        publish_tone(url, 1.0, {"handshake_timeout": "5000"})
    deadline = time.monotonic() + 5
    wanted = "DTLS alert sent: fatal illegal_parameter(47)"
    while wanted not in interop_edge.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wanted in interop_edge.output()
