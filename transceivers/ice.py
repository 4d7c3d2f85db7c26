"""The transceiver's one UDP socket and the aioice hook that puts every session's ICE on it.

``IceMux`` is a thin asyncio shell around ``transceivers.mux.MuxTable``: a non-blocking socket
drained from ``loop.add_reader``. Each session gets a ``VirtualProtocol`` (an aioice
``StunProtocol`` whose transport frames datagrams to the relay) instead of its own socket.

Hook: ``install()`` replaces the module global ``aiortc.rtcicetransport.Connection`` with
``MuxConnection`` once. ``MuxConnection`` behaves exactly like ``aioice.Connection`` unless it is
constructed inside ``bind_next_connection(...)`` (a contextvar scoped to one session's
``setRemoteDescription``); so plain aiortc peers in the same process keep their own sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aioice
import aiortc.rtcicetransport
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol

from relays.framing import MAX_HEADER, Addr, pack_header, parse_header
from transceivers.mux import MuxTable

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
SOCKET_BUFFER = 4 * 1024 * 1024  # absorbs bursts from many sessions; the kernel may cap it


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
    """aioice's STUN protocol, fed by the mux rather than by a socket of its own."""


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

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.Candidate]:
        binding = self._mux_binding
        if binding is None:
            return await super().get_component_candidates(component, addresses, timeout)
        protocol = binding.mux.attach(binding, self)
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


def install() -> None:
    """Make aiortc build ``MuxConnection`` (idempotent; stock behaviour outside a binding)."""
    aiortc.rtcicetransport.Connection = MuxConnection  # type: ignore[misc]


def bind_udp(host: str, port: int) -> socket.socket:
    """Return a bound non-blocking UDP socket (v4 or v6 from ``host``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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

    def attach(self, binding: MuxBinding, connection: aioice.Connection) -> VirtualProtocol:
        """Register a session's ufrag and return its protocol (connected to a virtual transport)."""
        self.table.add(binding.key, binding.ufrag)
        protocol = VirtualProtocol(connection)
        protocol.connection_made(_VirtualTransport(self, binding.key, protocol))
        self._protocols[binding.key] = protocol
        self._public[binding.key] = binding.public
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
