"""The DTLS of every aiortc session: cipher suites that independent WebRTC stacks share, one
certificate per transceiver process (``CertificateKeeper``), and handshake flights resent on a
short timer (``FastRetransmitDtlsTransport``, below).

aiortc 1.16 offers only ECDHE-ECDSA suites, so a DTLS server with an RSA certificate (GStreamer's
DTLS agent, 2048-bit RSA) answers a handshake_failure alert (RFC 5246 §7.4.2: the certificate
must suit the suite). RFC 8827 §6.5 makes ECDHE-ECDSA with P-256 mandatory, not exclusive: the
ECDHE-RSA forms are added after the ECDSA ones (ours is ECDSA, so as a server only those apply).
Alerts are logged with their RFC 5246 §7.2 name: aiortc discards the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import ClassVar

from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsTransport,
    SRTPProtectionProfile,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

logger = logging.getLogger(__name__)

CIPHER_SUITES = b":".join([  # RFC 8422 §6 (ECDHE_ECDSA, ECDHE_RSA), RFC 7905 (ChaCha20)
    b"ECDHE-ECDSA-AES128-GCM-SHA256",  # RFC 8827 §6.5: the mandatory one first
    b"ECDHE-ECDSA-CHACHA20-POLY1305",
    b"ECDHE-ECDSA-AES256-GCM-SHA384",
    b"ECDHE-ECDSA-AES128-SHA",
    b"ECDHE-ECDSA-AES256-SHA",
    b"ECDHE-RSA-AES128-GCM-SHA256",
    b"ECDHE-RSA-CHACHA20-POLY1305",
    b"ECDHE-RSA-AES256-GCM-SHA384",
    b"ECDHE-RSA-AES128-SHA",
    b"ECDHE-RSA-AES256-SHA",
])

SSL_CB_READ_ALERT = 0x4004  # OpenSSL ssl.h: SSL_CB_ALERT | SSL_CB_READ
SSL_CB_WRITE_ALERT = 0x4008  # SSL_CB_ALERT | SSL_CB_WRITE
ALERTS = {  # RFC 5246 §7.2 AlertDescription
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 40: "handshake_failure",
    42: "bad_certificate", 43: "unsupported_certificate", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 50: "decode_error", 51: "decrypt_error",
    70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    110: "unsupported_extension",
}


def describe_alert(value: int) -> str:
    """``fatal handshake_failure(40)`` for OpenSSL's alert value (level << 8 | description)."""
    level, description = value >> 8, value & 0xFF
    name = ALERTS.get(description, "alert")
    return f"{'fatal' if level == 2 else 'warning'} {name}({description})"


def _log_alert(conn: SSL.Connection, where: int, value: int) -> None:
    """OpenSSL's info callback: log each DTLS alert sent or received (a failed handshake's why)."""
    if where & SSL_CB_WRITE_ALERT == SSL_CB_WRITE_ALERT:
        direction = "sent"
    elif where & SSL_CB_READ_ALERT == SSL_CB_READ_ALERT:
        direction = "received"
    else:
        return
    if value >> 8 == 1 and value & 0xFF == 0:
        return  # close_notify: an ordinary end of session
    state = conn.get_state_string().decode(errors="replace")
    logger.info("DTLS alert %s: %s (state: %s)", direction, describe_alert(value), state)


class InteropCertificate(RTCCertificate):
    """aiortc's certificate (ECDSA P-256) whose DTLS context also offers ECDHE-RSA suites."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHER_SUITES)
        ctx.set_info_callback(_log_alert)
        return ctx


# -- One certificate per process ----------------------------------------------------------------
#
# aiortc makes a certificate for every peer connection (an ECDSA P-256 key and a signed X.509:
# ~95 us here) and hashes it for the answer's fingerprints (three digests, ~30 us, twice per
# answer), both on the answer's path, and builds an OpenSSL context for it when DTLS starts
# (~250 us, once ICE has connected, on the loop every call of the process shares). A server
# needs none of that per call: its certificate is its identity, and SFUs keep one per process
# (mediasoup per worker, Janus per process). WebRTC authenticates each DTLS handshake by the
# fingerprint in that call's SDP (RFC 8122 §5, RFC 8827 §6.5), not by a fresh key.
# The context's session cache is off, so no handshake of one call can resume another's.

# aiortc's certificates are valid for 30 days and a transceiver may run longer: sessions opened
# once the certificate is this old (s) get a new one
ROTATE_AFTER = 24 * 3600.0


class SharedCertificate(InteropCertificate):
    """An ``InteropCertificate`` that many sessions use: its fingerprints computed once, one
    DTLS context per list of SRTP profiles (its session cache off)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        super().__init__(key=key, cert=cert)
        self._fingerprints: list[RTCDtlsFingerprint] | None = None
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        key = tuple(p.openssl_profile for p in srtp_profiles)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = super()._create_ssl_context(srtp_profiles)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            self._contexts[key] = ctx
        return ctx


class CertificateKeeper:
    """The certificate a process's sessions use: made on first use, replaced once it is
    ``rotate_after`` seconds old (sessions keep the one they started with)."""

    def __init__(self, rotate_after: float = ROTATE_AFTER) -> None:
        self.rotate_after = rotate_after
        self._current: SharedCertificate | None = None
        self._made = 0.0

    def current(self, now: float) -> SharedCertificate:
        """The certificate for a session opened at ``now`` (monotonic seconds)."""
        if self._current is None or now - self._made >= self.rotate_after:
            self._current = SharedCertificate.generateCertificate()
            self._made = now
        return self._current


# -- Handshake retransmission on a short timer ------------------------------------------------
#
# OpenSSL retransmits a DTLS flight after 1 s (doubling): one lost handshake datagram costs a
# call a second of set-up. RFC 6347 §4.2.4.1 recommends 1 s but lets implementations use less
# (browsers derive theirs from the ICE round trip). OpenSSL's knob, DTLS_set_timer_cb, is C only,
# and the OpenSSL under pyOpenSSL is linked into cryptography's wheel without exporting it; its
# DTLSv1_handle_timeout does nothing before its own timer expires. So the session resends its
# last flight itself, byte for byte: a copy of a datagram the peer never saw is as good as
# OpenSSL's retransmission, and a copy of one it did see is dropped by the peer's record replay
# check (RFC 6347 §4.1.2.6). OpenSSL's own 1 s timer keeps running underneath.
#
# A byte-identical copy cannot make the peer answer again (it is a replay to it), so the other
# half of RFC 6347 §4.2.4 is done here too: a datagram that repeats, byte for byte, the one our
# current flight answered means the peer lost our flight and retransmitted: resend ours.


@dataclass(frozen=True)
class RetransmitPolicy:
    """Resend delays: ``initial``, doubling, at most ``cap`` seconds (RFC 6347 §4.2.4.1)."""

    initial: float = 0.15
    cap: float = 2.4

    def delay(self, attempt: int) -> float:
        return min(self.initial * 2.0 ** min(attempt, 32), self.cap)


DEFAULT_RETRANSMIT = RetransmitPolicy()


class FlightLog:
    """Which datagrams make up our current handshake flight, and which peer datagram prompted it.

    A flight is what we send between two receptions; pure bookkeeping, no sockets or timers.
    """

    def __init__(self) -> None:
        self.flight: list[bytes] = []
        self.trigger: bytes | None = None  # the peer datagram our flight answered
        self._last_in: bytes | None = None
        self._fresh = True  # the next datagram we send starts a new flight

    def received(self, datagram: bytes) -> bool:
        """Note a DTLS datagram from the peer; True if it repeats the one our flight answered."""
        if self.flight and datagram == self.trigger:
            return True
        self._last_in = datagram
        self._fresh = True
        return False

    def sent(self, datagram: bytes) -> bool:
        """Note a datagram we send; True when it starts a new flight (restart the timer)."""
        if self._fresh:
            self.flight = [datagram]
            self.trigger = self._last_in
            self._fresh = False
            return True
        self.flight.append(datagram)
        return False

    def retransmitting(self) -> None:
        """OpenSSL's own timer fired: what it writes next replaces the flight (same trigger)."""
        self._fresh = True
        self._last_in = self.trigger


class FastRetransmitDtlsTransport(RTCDtlsTransport):
    """aiortc's DTLS transport whose handshake flights are resent on ``policy``'s schedule.

    ``policy`` None: aiortc's behaviour (OpenSSL's 1 s timer only). Set by ``aiortc_hook``.
    """

    policy: ClassVar[RetransmitPolicy | None] = DEFAULT_RETRANSMIT
    resent = 0  # datagrams resent by this process (all sessions): for tests and the bench

    _flight_timer: asyncio.TimerHandle | None = None

    async def _do_handshake(self) -> None:
        if self.policy is not None:
            self._track_flights(self.policy)
        try:
            await super()._do_handshake()
        finally:
            self._stop_flight_timer()

    def _track_flights(self, policy: RetransmitPolicy) -> None:
        """Wrap this session's ``SSL.Connection`` BIO calls to see each datagram in and out."""
        ssl, log, loop = self._ssl, FlightLog(), asyncio.get_running_loop()
        assert ssl is not None, "start() creates the SSL connection before the handshake"
        bio_read, bio_write = ssl.bio_read, ssl.bio_write
        handle_timeout = ssl.DTLSv1_handle_timeout

        def arm(attempt: int) -> None:
            self._stop_flight_timer()
            if not self.encrypted and self.state == "connecting":
                self._flight_timer = loop.call_later(policy.delay(attempt), fire, attempt)

        def fire(attempt: int) -> None:
            self._flight_timer = None
            if not self.encrypted and self.state == "connecting":
                resend()
                arm(attempt + 1)

        def resend() -> None:
            for datagram in log.flight:
                FastRetransmitDtlsTransport.resent += 1
                asyncio.ensure_future(self._resend(datagram))

        def read(bufsiz: int) -> bytes:
            data: bytes = bio_read(bufsiz)  # SSL.WantReadError when OpenSSL wrote nothing
            if data and log.sent(data):
                arm(0)
            return data

        def write(buf: bytes | bytearray | memoryview) -> int:
            if log.received(bytes(buf)):
                resend()
            return int(bio_write(buf))

        def timeout() -> bool:
            log.retransmitting()
            return bool(handle_timeout())

        ssl.bio_read = read  # type: ignore[method-assign]
        ssl.bio_write = write  # type: ignore[method-assign]
        ssl.DTLSv1_handle_timeout = timeout  # type: ignore[method-assign]

    async def _resend(self, datagram: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self.transport._send(datagram)

    def _stop_flight_timer(self) -> None:
        if self._flight_timer is not None:
            self._flight_timer.cancel()
            self._flight_timer = None

    async def stop(self) -> None:
        self._stop_flight_timer()
        await super().stop()
