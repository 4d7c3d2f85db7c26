"""The transceiver's one UDP socket: a thin asyncio shell around ``transceivers.mux.MuxTable``.

A non-blocking socket drained from ``loop.add_reader``. Each session gets a ``VirtualProtocol``
(an aioice ``StunProtocol`` whose transport frames datagrams to the relay) instead of a socket of
its own; ``transceivers.aiortc_hook`` hands it to aioice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

import aioice
from aioice import stun
from aioice.ice import StunProtocol

from fleet.addresses import Addr
from relays.framing import MAX_HEADER, pack_header, parse_header
from transceivers.mux import MuxTable

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
SOCKET_BUFFER = 4 * 1024 * 1024  # absorbs bursts from many sessions; the kernel may cap it
CHECK_RTO = 0.1  # seconds before a connectivity check's first retransmission (aioice: 0.5)
CHECK_RETRANSMISSIONS = 8  # 0.1 s * (2**9 - 1): ~51 s of retrying (aioice: 6 from 0.5 s, ~64 s)
_FIRST_RTO = "_Transaction__timeout_delay"  # aioice 0.13's private name for the running RTO


@functools.lru_cache(maxsize=65536)
def _header(client: Addr) -> bytes:
    return pack_header(client)


class _VirtualTransport(asyncio.DatagramTransport):
    """What a session's ``StunProtocol`` sees as its socket: frames go out of the shared one."""

    def __init__(self, mux: IceMux, key: str, protocol: VirtualProtocol) -> None:
        super().__init__()
        self._mux, self._key, self._protocol = mux, key, protocol
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self._mux.send(addr, data)

    def close(self) -> None:
        """Detach the session's routes (never the socket) and report the loss soon."""
        if self._closing:
            return
        self._closing = True
        self._mux.detach(self._key)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.public_of(self._key)
        return default


class VirtualProtocol(StunProtocol):
    """aioice's STUN protocol, fed by the mux rather than by a socket of its own.

    The session's own connectivity checks are retransmitted from ``CHECK_RTO`` on (doubling)
    instead of aioice's 500 ms: the transceiver is the controlled agent, so its ICE (and the
    DTLS handshake behind it) waits for its triggered check to succeed, and one lost check or
    response cost half a second of set-up. Browsers re-check an unconnected pair about every
    50 ms. ``CHECK_RETRANSMISSIONS`` keeps a check alive ~50 s, as long as aioice's. Consent
    checks (aioice sends those with ``retransmissions=0``) keep aioice's timing.
    """

    media_sink: Callable[[bytes], bool] | None = None  # see datagram_received

    async def request(
        self,
        request: stun.Message,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        if retransmissions is not None:
            return await super().request(request, addr, integrity_key, retransmissions)
        assert request.transaction_id not in self.transactions
        if integrity_key is not None:
            request.add_message_integrity(integrity_key)
        transaction = stun.Transaction(request, addr, self, retransmissions=CHECK_RETRANSMISSIONS,
                                       integrity_key=integrity_key)
        setattr(transaction, _FIRST_RTO, CHECK_RTO)  # aioice reads stun.RETRY_RTO into this
        self.transactions[request.transaction_id] = transaction
        try:
            return await transaction.run()
        finally:
            del self.transactions[request.transaction_id]

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        """SRTP/SRTCP (RFC 7983: first byte 128-191) to ``media_sink`` when the session has one
        (``transceivers.lean_rtp``); anything else that cannot be STUN (first byte above 3)
        straight to the connection, without aioice's attempt to parse it as STUN first."""
        assert isinstance(data, bytes)
        first = data[0] if data else 0
        if first > 3:
            if 127 < first < 192:
                sink = self.media_sink
                if sink is not None and sink(data):
                    return
            self.receiver.data_received(data, self.local_candidate.component)
            return
        super().datagram_received(data, addr)




class IceMux:
    """The single socket: frames in, routed to sessions' protocols; frames out to relays."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.table: MuxTable[str] = MuxTable()
        self._protocols: dict[str, VirtualProtocol] = {}
        self._public: dict[str, Addr] = {}
        self._buf = bytearray(MAX_DATAGRAM + MAX_HEADER)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.sent = 0
        self.send_errors = 0

    @property
    def address(self) -> Addr:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._drain)

    def close(self) -> None:
        """Stop reading and close the socket (the daemon's exit; sessions are closed first)."""
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def has_ufrag(self, ufrag: str) -> bool:
        return self.table.has_ufrag(ufrag)

    def attach(
        self, key: str, *, ufrag: str, pwd: str, public: Addr, connection: aioice.Connection
    ) -> VirtualProtocol:
        """Register a session's ufrag and return its protocol (connected to a virtual transport);
        ``public`` is the relay address the session's candidate names."""
        self.table.add(key, ufrag, pwd)
        protocol = VirtualProtocol(connection)
        protocol.connection_made(_VirtualTransport(self, key, protocol))
        self._protocols[key] = protocol
        self._public[key] = public
        return protocol

    def detach(self, key: str) -> None:
        """Remove a session's routes (idempotent). The socket stays open for the others."""
        self.table.remove(key)
        self._protocols.pop(key, None)
        self._public.pop(key, None)

    def public_of(self, key: str) -> Addr | None:
        return self._public.get(key)

    def send(self, client: Addr, data: bytes) -> None:
        relay = self.table.relay_for(client)
        if relay is None:
            return
        try:
            self.sock.sendto(_header(client) + data, relay)
            self.sent += 1
        except OSError as exc:  # full buffer or ICMP error: UDP may drop, ICE retransmits
            self.send_errors += 1
            logger.debug("send to %s via %s failed: %s", client, relay, exc)

    def _drain(self) -> None:
        view = memoryview(self._buf)
        while True:
            try:
                size, relay = self.sock.recvfrom_into(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier send
                logger.debug("recv error: %s", exc)
                continue
            self.received += 1
            self._handle(view[:size], (relay[0], relay[1]))

    def _handle(self, data: memoryview, relay: Addr) -> None:
        try:
            client, offset = parse_header(data)
        except ValueError as exc:
            self.table.count_bad_frame()
            logger.debug("bad frame from %s: %s", relay, exc)
            return
        payload = bytes(data[offset:])
        key = self.table.route(client, relay, payload)
        if key is None:
            return
        protocol = self._protocols.get(key)
        if protocol is not None:
            protocol.datagram_received(payload, client)
