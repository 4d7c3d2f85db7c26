"""The sessions' DTLS context against a DTLS server with an RSA certificate (GStreamer's kind):
a real OpenSSL handshake over memory BIOs, no sockets."""

from __future__ import annotations

import datetime
import logging

import aiortc.rtcpeerconnection
import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from transceivers import aiortc_hook
from transceivers.dtls import InteropCertificate, describe_alert


def _rsa_server(ciphers: bytes = b"DEFAULT") -> SSL.Connection:
    """A DTLS 1.2 server like GStreamer's dtlsagent: self-signed 2048-bit RSA, use_srtp."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "gst")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    ctx.set_cipher_list(ciphers)
    server = SSL.Connection(ctx)
    server.set_accept_state()
    return server


def _handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Pump flights between the two until both finish; ``SSL.Error`` once a side gave up and
    its alert has reached the other."""
    failed: SSL.Error | None = None
    for _ in range(20):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                if failed is not None:
                    raise
                failed = exc
        for src, dst in ((client, server), (server, client)):
            try:
                while True:
                    dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
        if failed is None and client.get_cipher_name() and server.get_cipher_name():
            client.do_handshake()
            server.do_handshake()
            return
    raise failed or AssertionError("handshake did not finish")


def _client(certificate: RTCCertificate) -> SSL.Connection:
    conn = SSL.Connection(certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES))
    conn.set_connect_state()
    return conn


def test_stock_aiortc_offers_no_suite_for_an_rsa_server() -> None:
    with pytest.raises(SSL.Error, match="no shared cipher|no suitable|handshake failure"):
        _handshake(_client(RTCCertificate.generateCertificate()), _rsa_server())


def test_interop_certificate_completes_against_an_rsa_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = _client(InteropCertificate.generateCertificate()), _rsa_server()
    _handshake(client, server)
    assert client.get_cipher_name() == "ECDHE-RSA-AES128-GCM-SHA256"
    assert client.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    assert not [r for r in caplog.records if r.name == "transceivers.dtls"]


def test_a_refused_handshake_logs_the_alert(caplog: pytest.LogCaptureFixture) -> None:
    server = _rsa_server(ciphers=b"AES128-GCM-SHA256")  # static RSA: a suite we never offer
    with caplog.at_level(logging.INFO, logger="transceivers.dtls"), pytest.raises(SSL.Error):
        _handshake(_client(InteropCertificate.generateCertificate()), server)
    messages = [r.getMessage() for r in caplog.records if r.name == "transceivers.dtls"]
    assert any("DTLS alert received: fatal handshake_failure(40)" in m for m in messages), messages


def test_describe_alert() -> None:
    assert describe_alert(0x228) == "fatal handshake_failure(40)"
    assert describe_alert(0x22F) == "fatal illegal_parameter(47)"
    assert describe_alert(0x1FE) == "warning alert(254)"


def test_install_gives_new_peers_the_interop_certificate() -> None:
    aiortc_hook.install()
    assert aiortc.rtcpeerconnection.RTCCertificate is InteropCertificate
