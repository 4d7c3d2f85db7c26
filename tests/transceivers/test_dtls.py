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
from transceivers.dtls import (
    CertificateKeeper,
    InteropCertificate,
    SharedCertificate,
    describe_alert,
)


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


def _exchange(client: SSL.Connection, server: SSL.Connection) -> None:
    """Hand each side the datagrams the other has written (memory BIOs: no sockets)."""
    for src, dst in ((client, server), (server, client)):
        try:
            while True:
                dst.bio_write(src.bio_read(65536))
        except SSL.WantReadError:
            pass


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
        _exchange(client, server)
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
    assert aiortc.rtcpeerconnection.RTCCertificate is aiortc_hook.SessionCertificate
    made = aiortc.rtcpeerconnection.RTCCertificate.generateCertificate()
    assert type(made) is InteropCertificate  # outside certificates_from: one of its own


def test_a_keeper_hands_out_one_certificate_until_it_is_a_day_old() -> None:
    keeper = CertificateKeeper(rotate_after=100.0)
    first = keeper.current(now=1000.0)
    assert isinstance(first, SharedCertificate)
    assert keeper.current(now=1099.9) is first
    second = keeper.current(now=1100.0)
    assert second is not first
    assert second.getFingerprints() != first.getFingerprints()
    assert keeper.current(now=1150.0) is second  # counted from the new one's making


def test_peers_made_inside_certificates_from_share_the_keepers_certificate() -> None:
    aiortc_hook.install()
    keeper = CertificateKeeper()
    with aiortc_hook.certificates_from(keeper):
        one = aiortc.rtcpeerconnection.RTCCertificate.generateCertificate()
        two = aiortc.rtcpeerconnection.RTCCertificate.generateCertificate()
        with aiortc_hook.certificates_from(None):
            own = aiortc.rtcpeerconnection.RTCCertificate.generateCertificate()
    after = aiortc.rtcpeerconnection.RTCCertificate.generateCertificate()
    assert one is two is keeper.current(now=0.0)
    assert own is not one and after is not one
    assert type(own) is InteropCertificate and type(after) is InteropCertificate


def test_a_shared_certificate_builds_one_context_per_profile_list_without_a_session_cache() -> None:
    shared = SharedCertificate.generateCertificate()
    both, one = list(SRTP_PROFILES), list(SRTP_PROFILES[:1])
    ctx = shared._create_ssl_context(srtp_profiles=both)
    assert shared._create_ssl_context(srtp_profiles=both) is ctx
    assert shared._create_ssl_context(srtp_profiles=one) is not ctx
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF  # no call resumes another's
    # the fingerprints, computed once, are what aiortc computes for the same certificate
    stock = RTCCertificate(key=shared._key, cert=shared._cert).getFingerprints()
    assert shared.getFingerprints() == stock
    shared.getFingerprints().clear()  # a caller's list is its own
    assert shared.getFingerprints() == stock


def test_two_handshakes_interleaved_on_one_shared_context_each_get_their_own_keys() -> None:
    """Two DTLS sessions off one context at once, their flights interleaved step by step (as
    two calls' handshakes interleave on a transceiver's loop): both complete, each with its own
    master secret and SRTP keying material, and each server sees its own client's certificate."""
    shared = SharedCertificate.generateCertificate()
    pairs = []
    for _ in range(2):
        server = SSL.Connection(shared._create_ssl_context(srtp_profiles=list(SRTP_PROFILES)))
        server.set_accept_state()
        peer = RTCCertificate.generateCertificate()
        client = SSL.Connection(peer._create_ssl_context(srtp_profiles=list(SRTP_PROFILES)))
        client.set_connect_state()
        pairs.append((client, server, peer))
    done = [False, False]
    for _ in range(20):
        for i, (client, server, _) in enumerate(pairs):
            for side in (client, server):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
            _exchange(client, server)
            finished = (server.get_peer_finished(), client.get_peer_finished())
            done[i] = None not in finished
        if all(done):
            break
    assert all(done)
    (c0, s0, p0), (c1, s1, p1) = pairs
    assert s0.master_key() != s1.master_key()
    keys = [s.export_keying_material(b"EXTRACTOR-dtls_srtp", 60) for s in (s0, s1)]
    assert keys[0] != keys[1]
    assert keys[0] == c0.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
    for server, peer in ((s0, p0), (s1, p1)):
        seen = server.get_peer_certificate()
        assert seen is not None
        assert seen.to_cryptography() == peer._cert
