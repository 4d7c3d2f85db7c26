"""FFmpeg's WHIP muxer (the FFmpeg in the pinned PyAV wheel) calling the edge: answer -> connected.

FFmpeg drops a DTLS flight that reaches it before it has finished ICE, a few ms early, so with
OpenSSL's 1 s timer on the transceiver every FFmpeg call took ~1.1 s to connect. Measured here
from the session's ``answered_at`` to its ``connected_at`` (the transceiver's report), both ways
FFmpeg can be set up (``a=setup:passive``: the transceiver is the DTLS client; ``dtls_active``:
the server), against the edge with the short flight timer and one with OpenSSL's (same run,
alternating). No loss is added: this is FFmpeg's own early drop.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

import av
import av.logging
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.common import Row, median
from whip.client import get_json

RATE, FRAME = 48_000, 960
MODES = {"passive": {}, "active": {"whip_flags": "dtls_active"}}


def p256_certificate(directory: Path) -> dict[str, str]:
    """FFmpeg's GnuTLS build defaults to P-224, which OpenSSL 4 refuses: give it P-256."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ffmpeg-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"cert_file": str(directory / "cert.pem"), "key_file": str(directory / "key.pem")}


def publish(url: str, seconds: float, options: dict[str, str]) -> str | None:
    """Publish a paced Opus tone; return the session resource FFmpeg DELETEd on close."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)  # FFmpeg names the resource at VERBOSE
    try:
        with av.logging.Capture() as logs:
            container = av.open(url, mode="w", format="whip", options=options)
            try:
                stream = container.add_stream("libopus", rate=RATE)
                stream.layout = "stereo"
                started = time.monotonic()
                for index in range(int(seconds * RATE / FRAME)):
                    frame = av.AudioFrame.from_ndarray(np.zeros((1, FRAME * 2), np.int16),
                                                       format="s16", layout="stereo")
                    frame.sample_rate, frame.pts = RATE, index * FRAME
                    for packet in stream.encode(frame):
                        container.mux(packet)
                    time.sleep(max(0.0, started + (index + 1) * FRAME / RATE - time.monotonic()))
            finally:
                container.close()
    finally:
        av.logging.set_level(previous)
    for _level, _name, message in logs:
        if message.startswith("Dispose resource ") and message.rstrip().endswith(" ok"):
            return message.split()[2]
    return None


def connect_ms(base_url: str, options: dict[str, str]) -> float:
    resource = publish(urljoin(base_url, "/v1/sessions"), 1.0, options)
    if resource is None:
        return float("nan")
    state = get_json(urljoin(base_url, resource))
    if not state["answered_at"] or not state["connected_at"]:
        return float("nan")
    answered = datetime.datetime.fromisoformat(state["answered_at"])
    connected = datetime.datetime.fromisoformat(state["connected_at"])
    return (connected - answered).total_seconds() * 1000


def run(quick: bool) -> list[Row]:
    from bench.edge import edge, other_edge

    edges = {"short": edge().base_url,
             "stock": other_edge("dtls-stock", {"DTLS_RETRANSMIT_INITIAL": "0"}).base_url}
    options = p256_certificate(Path(tempfile.mkdtemp(prefix="bench-ffmpeg-")))
    n = 2 if quick else 6
    rows = []
    for mode, flags in MODES.items():
        got: dict[str, list[float]] = {k: [] for k in edges}
        for _ in range(n):
            for name, url in edges.items():
                got[name].append(connect_ms(url, {**options, **flags}))
        value, base = median(got["short"]), median(got["stock"])
        rows.append(Row(f"setup: FFmpeg WHIP ({mode}) answer -> connected p50", value, "ms",
                        baseline=base, ratio=value / base if base else None,
                        note=f"baseline: OpenSSL's 1 s DTLS timer, same run; n={n}; "
                             f"short {', '.join(f'{v:.0f}' for v in got['short'])}; "
                             f"stock {', '.join(f'{v:.0f}' for v in got['stock'])}"))
    return rows
