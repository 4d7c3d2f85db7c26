"""The aioice hook that puts every aiortc session's ICE on the transceiver's shared socket.

``install()`` replaces the module global ``aiortc.rtcicetransport.Connection`` with
``MuxConnection`` once, aiortc's certificate with ``SessionCertificate`` and its DTLS transport
with ``transceivers.dtls.FastRetransmitDtlsTransport``.
``MuxConnection`` behaves exactly like ``aioice.Connection`` unless it is constructed inside
``bind_next_connection(...)`` (a contextvar scoped to one session's ``setRemoteDescription``);
so plain aiortc peers in the same process keep their own sockets. Likewise a peer connection
made inside ``certificates_from(keeper)`` takes the keeper's shared certificate; any other gets
a fresh ``InteropCertificate``, as aiortc would make.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.stun
import aiortc.rtcicetransport
import aiortc.rtcpeerconnection
from aioice.candidate import candidate_foundation, candidate_priority

from fleet.addresses import Addr
from transceivers.dtls import (
    DEFAULT_RETRANSMIT,
    CertificateKeeper,
    FastRetransmitDtlsTransport,
    InteropCertificate,
    RetransmitPolicy,
)
from transceivers.shared_socket import IceMux


@dataclass(frozen=True)
class MuxBinding:
    """What a session's ICE connection needs: our mux, its key, minted credentials, relay."""

    mux: IceMux
    key: str
    ufrag: str
    pwd: str
    public: Addr


class _Pending:
    """A binding waiting for exactly one ``MuxConnection`` to claim it."""

    def __init__(self, binding: MuxBinding) -> None:
        self.binding: MuxBinding | None = binding

    def claim(self) -> MuxBinding:
        binding, self.binding = self.binding, None
        if binding is None:
            raise RuntimeError("a second ICE connection for one session (use max-bundle)")
        return binding


_pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "transceiver_mux_pending", default=None
)


@contextlib.contextmanager
def bind_next_connection(binding: MuxBinding) -> Iterator[None]:
    """Within this block (and this task), the next aiortc ICE connection uses ``binding``."""
    token = _pending.set(_Pending(binding))
    try:
        yield
    finally:
        _pending.reset(token)


class MuxConnection(aioice.Connection):
    """``aioice.Connection`` with one host candidate (the relay's public address) on the mux."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pending = _pending.get()
        self._mux_binding = pending.claim() if pending is not None else None
        if self._mux_binding is not None:
            kwargs.update(
                local_username=self._mux_binding.ufrag,
                local_password=self._mux_binding.pwd,
                stun_server=None,
                turn_server=None,
            )
        super().__init__(*args, **kwargs)
        self._rebound: set[tuple[str, int]] = set()  # new caller addresses awaiting proof

    async def gather_candidates(self) -> None:
        """aioice's, without listing this host's interfaces first (~0.5 ms of system calls on
        every offer's path, 2026-12-01) when the one candidate is the relay's address."""
        if self._mux_binding is None:
            await super().gather_candidates()
            return
        if not self._local_candidates_start:
            self._local_candidates_start = True
            for component in self._components:
                self._local_candidates += await self.get_component_candidates(
                    component=component, addresses=[])
            self._local_candidates_end = True

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        binding = self._mux_binding
        if binding is None:
            return await super().get_component_candidates(component, addresses, timeout)
        protocol = binding.mux.attach(
            binding.key, ufrag=binding.ufrag, pwd=binding.pwd, public=binding.public,
            connection=self,
        )
        host, port = binding.public
        protocol.local_candidate = aioice.Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        self._protocols.append(protocol)
        return [protocol.local_candidate]


    def check_incoming(
        self, message: aioice.stun.Message, addr: tuple[str, int], protocol: Any
    ) -> None:
        """Learn a check's source even without PRIORITY (mandatory per RFC 8445 §7.1.1, but
        some WHIP callers omit it): a peer-reflexive candidate's own priority stands in (§5.1.2).

        An authenticated check from a new address of a connected peer is a NAT rebinding:
        remember it, so the pair its triggered check proves takes over (``check_complete``).
        """
        component = protocol.local_candidate.component
        if "PRIORITY" not in message.attributes:
            message.attributes["PRIORITY"] = candidate_priority(component, "prflx")
        selected = self._nominated.get(component)
        if self._mux_binding is not None and selected is not None \
                and selected.remote_addr != addr:
            self._rebound.add(addr)
        super().check_incoming(message, addr, protocol)

    def check_complete(self, pair: Any) -> None:
        """A connected session follows its caller to a new address once both directions are
        proven there: the caller's authenticated check came from it and our triggered check to
        it was answered (consent, RFC 7675). The controlling caller does not re-nominate on a
        NAT rebinding (no USE-CANDIDATE in consent checks), so without this the session would
        keep sending to the dead mapping until consent expires (30 s) and the call ends."""
        if pair.remote_addr in self._rebound \
                and pair.state == aioice.ice.CandidatePair.State.SUCCEEDED:
            self._rebound.discard(pair.remote_addr)
            pair.nominated = True  # super() selects it for the component
        super().check_complete(pair)


_KEEPER: contextvars.ContextVar[CertificateKeeper | None] = contextvars.ContextVar(
    "certificate_keeper", default=None
)


class SessionCertificate(InteropCertificate):
    """What aiortc's ``RTCPeerConnection`` makes its certificate with, once installed."""

    @classmethod
    def generateCertificate(cls) -> InteropCertificate:  # type: ignore[override]
        keeper = _KEEPER.get()
        if keeper is None:
            return InteropCertificate.generateCertificate()
        return keeper.current(time.monotonic())


@contextlib.contextmanager
def certificates_from(keeper: CertificateKeeper | None) -> Iterator[None]:
    """Peer connections made inside take ``keeper``'s certificate (None: one of their own)."""
    token = _KEEPER.set(keeper)
    try:
        yield
    finally:
        _KEEPER.reset(token)


def install(dtls_retransmit: RetransmitPolicy | None = DEFAULT_RETRANSMIT) -> None:
    """Make aiortc build ``MuxConnection`` (idempotent; stock behaviour outside a binding), give
    each new peer connection an ``InteropCertificate`` (more DTLS cipher suites; inside
    ``certificates_from``, a shared one) and a DTLS transport that resends handshake flights on
    ``dtls_retransmit`` (None: OpenSSL's 1 s)."""
    aiortc.rtcicetransport.Connection = MuxConnection  # type: ignore[misc]
    aiortc.rtcpeerconnection.RTCCertificate = SessionCertificate  # type: ignore[misc]
    FastRetransmitDtlsTransport.policy = dtls_retransmit
    aiortc.rtcpeerconnection.RTCDtlsTransport = FastRetransmitDtlsTransport  # type: ignore[misc]
