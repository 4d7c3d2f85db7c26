"""The relay's ICE-TCP shell: an asyncio server whose connections feed ``relays.tcpmux``.

Every decision (limits, the first Binding, aliases, expiry) is the core's ``TcpTable``; this
module accepts sockets, hands their bytes to it, carries out what comes back, and writes
transceiver replies framed (RFC 4571). Writes never block: past ``max_write_buffer`` queued bytes
a reply is dropped and counted, and the UDP path never waits on a TCP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import cast

from fleet.addresses import Addr
from relays.actions import AnswerHealth, Forward
from relays.tcpmux import LENGTH, CloseConn, TcpClose, TcpConn, TcpDrop, TcpReject, TcpTable

logger = logging.getLogger(__name__)

EXPIRE_INTERVAL = 1.0  # seconds between deadline sweeps
LISTEN_BACKLOG = 1024


class _Connection(asyncio.Protocol):
    """One accepted socket; ``conn`` is None when the core refused it."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.conn: TcpConn | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop: no subclass
        peer = transport.get_extra_info("peername")
        verdict = self.server.table.open(peer[0] if peer else "?", self.server.now())
        if isinstance(verdict, TcpReject):
            logger.debug("tcp reject %s: %s", verdict.value, peer)
            self._abort()
            return
        self.conn = verdict
        self.server.protocols[verdict.conn_id] = self
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.closed is not None:
            return
        for action in self.server.table.receive(conn, data, self.server.now()):
            if isinstance(action, Forward):
                self.server.forward(action)
            elif isinstance(action, AnswerHealth):
                self.write(action.response)
            elif isinstance(action, CloseConn):
                logger.debug("tcp close %s: %s", action.reason.value, conn.alias)
                self.server.protocols.pop(conn.conn_id, None)
                self._abort()
                return

    def write(self, packet: bytes | memoryview) -> None:
        """Queue ``packet`` framed; dropped (counted) when the client's buffer is full."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        table = self.server.table
        if transport.get_write_buffer_size() + len(packet) > table.limits.max_write_buffer:
            table.drops[TcpDrop.WRITE_FULL] += 1
            return
        transport.write(LENGTH.pack(len(packet)) + packet)  # one write: one segment
        table.forwarded_out += 1

    def eof_received(self) -> bool:
        return False  # close: ICE-TCP has no half-open use

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is not None and conn.closed is None:
            self.server.table.close(conn, TcpClose.PEER_CLOSED)
            self.server.protocols.pop(conn.conn_id, None)
        self.transport = None

    def _abort(self) -> None:
        """Close without lingering (RST): a refused or misbehaving client gets nothing more."""
        if self.transport is not None:
            self.transport.abort()


class TcpServer:
    """The listener and the sweep task; ``forward`` sends a packet on to its transceiver."""

    def __init__(self, table: TcpTable, forward: Callable[[Forward], None],
                 now: Callable[[], float]) -> None:
        self.table = table
        self.forward = forward
        self.now = now
        self.protocols: dict[int, _Connection] = {}
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, bind: Addr) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), bind[0], bind[1], reuse_port=True,
            backlog=LISTEN_BACKLOG,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    @property
    def address(self) -> Addr:
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    def send(self, conn_id: int, payload: bytes | memoryview) -> None:
        """A transceiver frame for connection ``conn_id`` (its payload) goes out framed."""
        protocol = self.protocols.get(conn_id)
        if protocol is not None:
            protocol.write(payload)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            for conn in self.table.expire(self.now()):
                protocol = self.protocols.pop(conn.conn_id, None)
                if protocol is not None:
                    protocol._abort()

    async def close(self) -> None:
        """Stop listening and close every connection (counted ``relay_closing``)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for protocol in list(self.protocols.values()):
            if protocol.conn is not None:
                self.table.close(protocol.conn, TcpClose.RELAY_CLOSING)
            protocol._abort()
        self.protocols.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
