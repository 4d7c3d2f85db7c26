"""ICE-TCP on the relay (sans-I/O): RFC 4571 framing, alias addresses, the connection table.

A caller without UDP reaches the relay's RFC 6544 passive candidate over TCP. Every packet on
the stream is framed (RFC 4571 section 2)::

    0                   1                   2
    +-------------------------------+-------------------------------
    |        LENGTH (16 bits)       |  packet (LENGTH bytes) ...
    +-------------------------------+-------------------------------

The first packet must be a STUN Binding request whose server ufrag validates for this shard
(the UDP rule, ``Demux.authorize_binding``); the connection is then bound to that transceiver.
The transceiver never learns about TCP: each connection gets a stable *alias* client address in
100.64.0.0/10 (RFC 6598 shared space, never a caller's real address seen here) that the relay
puts in the relay<->transceiver frame header, so aioice sees an ordinary UDP peer and needs no
ICE-TCP; frames addressed to an alias go back on its connection. An alias packs the relay shard
and worker so that aliases from different relays never collide at one transceiver::

    100.64.0.0 + (shard << 6 | worker << 2 | index >> 16) : (index & 0xFFFF)

Limits (all counted by reason): a deadline for the first valid Binding, connections per client
IP and in total, a maximum frame size, idle expiry in line with ICE consent (RFC 7675). Time
comes in as ``now``; the shell owns sockets, the clock and the write buffers.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.addresses import Addr
from relays.actions import AnswerHealth, Drop, DropReason, Forward
from relays.flows import CONSENT_TIMEOUT
from relays.framing import pack_header

LENGTH = struct.Struct("!H")  # RFC 4571 section 2: 16-bit big-endian length
MAX_RFC4571 = 0xFFFF
ALIAS_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598
_ALIAS_BASE = int(ALIAS_NETWORK.network_address)
ALIAS_INDEXES = 1 << 18  # per (shard, worker): 2 address bits + 16 port bits
MAX_ALIAS_SHARD = (1 << 16) - 1
MAX_ALIAS_WORKER = (1 << 4) - 1


def pack_frame(packet: bytes | memoryview) -> bytes:
    """Return ``packet`` behind its RFC 4571 length."""
    if len(packet) > MAX_RFC4571:
        raise ValueError("packet too large")
    return LENGTH.pack(len(packet)) + bytes(packet)


class Deframer:
    """Incremental RFC 4571 parser: ``feed`` any split of the stream, get whole packets."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Return the packets completed by ``data``; ``ValueError("frame too large")`` when a
        length prefix exceeds ``max_frame`` (the buffer never grows past one frame)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        start, end = 0, len(buf)
        while end - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buf, start)
            if size > self.max_frame:
                raise ValueError("frame too large")
            if end - start - LENGTH.size < size:
                break
            out.append(bytes(buf[start + LENGTH.size:start + LENGTH.size + size]))
            start += LENGTH.size + size
        del buf[:start]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def alias_addr(shard: int, worker: int, index: int) -> Addr:
    """The alias client address of connection ``index`` of relay ``shard`` worker ``worker``."""
    if not (0 <= shard <= MAX_ALIAS_SHARD and 0 <= worker <= MAX_ALIAS_WORKER
            and 1 <= index < ALIAS_INDEXES):
        raise ValueError("alias out of range")
    host = _ALIAS_BASE + (shard << 6 | worker << 2 | index >> 16)
    port = index & 0xFFFF
    if port == 0:
        raise ValueError("alias out of range")
    return str(ipaddress.IPv4Address(host)), port


def is_alias(addr: Addr) -> bool:
    """True for an address in the alias range (never a real client seen by this relay)."""
    try:
        return ipaddress.ip_address(addr[0]) in ALIAS_NETWORK
    except ValueError:
        return False


class AliasPool:
    """Aliases handed out round-robin from a random start, so a freed one (or one a restarted
    relay used) is reused only after the whole range went by."""

    def __init__(self, *, shard: int, worker: int, start: int) -> None:
        self.shard, self.worker = shard, worker
        self._next = start % ALIAS_INDEXES
        self._used: set[int] = set()

    def allocate(self) -> tuple[int, Addr] | None:
        """Return ``(index, alias)`` of a free alias, None when every one is in use."""
        for _ in range(ALIAS_INDEXES):
            index, self._next = self._next, (self._next + 1) % ALIAS_INDEXES
            if index & 0xFFFF == 0 or index in self._used:  # port 0 is no address
                continue
            self._used.add(index)
            return index, alias_addr(self.shard, self.worker, index)
        return None

    def free(self, index: int) -> None:
        self._used.discard(index)

    def __len__(self) -> int:
        return len(self._used)


class TcpClose(enum.StrEnum):
    """Why the relay ended a connection (heartbeat counter ``tcp_closed_<value>``)."""

    FIRST_TIMEOUT = "first_timeout"  # no valid Binding before the deadline (slowloris)
    IDLE = "idle"  # nothing from the client for longer than ICE consent allows
    NOT_BINDING = "not_binding"  # the first packet was not a STUN Binding request
    BAD_BINDING = "bad_binding"  # a Binding request the UDP rules drop (ufrag, shard, ...)
    UFRAG_FULL = "ufrag_full"  # max_per_ufrag connections already bound to this ufrag
    FRAME_TOO_LARGE = "frame_too_large"
    PEER_CLOSED = "peer_closed"  # the client closed or reset it
    RELAY_CLOSING = "relay_closing"


class TcpReject(enum.StrEnum):
    """Why an accepted socket was closed at once (counter ``tcp_rejected_<value>``)."""

    TOTAL = "total"
    PER_IP = "per_ip"
    NO_ALIAS = "no_alias"


class TcpDrop(enum.StrEnum):
    """Packets dropped on a live connection (counter ``tcp_drop_<value>``)."""

    EMPTY = "empty"  # a zero-length frame
    WRITE_FULL = "write_full"  # the client reads too slowly: its write buffer is full
    GONE = "gone"  # a frame from a transceiver for an alias whose connection is closed


@dataclass(frozen=True, slots=True)
class TcpLimits:
    first_timeout: float = 5.0  # seconds for the first valid Binding request
    idle_timeout: float = CONSENT_TIMEOUT  # RFC 7675 section 5.1
    max_connections: int = 10_000  # per worker
    max_per_ip: int = 64  # a NAT may hide a building of callers; a cap, not a quota
    max_per_ufrag: int = 4  # a session needs one
    max_frame: int = 1500  # bytes of one RFC 4571 packet; WebRTC keeps datagrams under MTU
    max_write_buffer: int = 256 * 1024  # bytes queued toward one client before drops


@dataclass(frozen=True, slots=True)
class Authorized:
    """A Binding request the UDP rules accept: the connection may be bound to the transceiver."""

    ufrag: str
    transceiver_id: int
    transceiver: Addr


@dataclass(frozen=True, slots=True)
class CloseConn:
    reason: TcpClose


@dataclass(frozen=True, slots=True)
class SendToTcp:
    """Send the frame's payload (from ``offset``) on connection ``conn_id``, framed."""

    conn_id: int
    offset: int


@dataclass(slots=True, eq=False)
class TcpConn:
    conn_id: int
    peer_ip: str
    alias_index: int
    alias: Addr
    header: bytes  # the frame header naming the alias
    deframer: Deframer
    opened: float
    last_seen: float
    send: SendToTcp
    transceiver_id: int | None = None  # None until the first valid Binding
    transceiver: Addr | None = None
    ufrag: str | None = None
    closed: TcpClose | None = None


Authorize = Callable[[bytes, Addr, float], Authorized | AnswerHealth | Drop]


@dataclass(slots=True)
class TcpTable:
    """Every ICE-TCP connection of one relay worker; ``close`` is the one removal path."""

    limits: TcpLimits
    aliases: AliasPool
    authorize: Authorize
    conns: dict[int, TcpConn] = field(default_factory=dict)
    closes: Counter[TcpClose] = field(default_factory=Counter)
    rejects: Counter[TcpReject] = field(default_factory=Counter)
    drops: Counter[TcpDrop] = field(default_factory=Counter)
    accepted: int = 0
    bound: int = 0
    forwarded_in: int = 0  # bumped by the shell
    forwarded_out: int = 0  # bumped by the shell
    _by_header: dict[bytes, TcpConn] = field(default_factory=dict)
    _per_ip: Counter[str] = field(default_factory=Counter)
    _per_ufrag: Counter[str] = field(default_factory=Counter)
    _next_id: int = 1

    def open(self, peer_ip: str, now: float) -> TcpConn | TcpReject:
        """A new connection from ``peer_ip``: a ``TcpConn`` awaiting its Binding, or why not."""
        if len(self.conns) >= self.limits.max_connections:
            self.rejects[TcpReject.TOTAL] += 1
            return TcpReject.TOTAL
        if self._per_ip[peer_ip] >= self.limits.max_per_ip:
            self.rejects[TcpReject.PER_IP] += 1
            return TcpReject.PER_IP
        got = self.aliases.allocate()
        if got is None:
            self.rejects[TcpReject.NO_ALIAS] += 1
            return TcpReject.NO_ALIAS
        index, alias = got
        conn_id, self._next_id = self._next_id, self._next_id + 1
        header = pack_header(alias)
        conn = TcpConn(conn_id, peer_ip, index, alias, header, Deframer(self.limits.max_frame),
                       now, now, SendToTcp(conn_id, len(header)))
        self.conns[conn_id] = conn
        self._by_header[header] = conn
        self._per_ip[peer_ip] += 1
        self.accepted += 1
        return conn

    def receive(
        self, conn: TcpConn, data: bytes | memoryview, now: float
    ) -> list[Forward | AnswerHealth | CloseConn]:
        """Bytes from the client: packets to forward, a health answer, or a close (last)."""
        try:
            packets = conn.deframer.feed(data)
        except ValueError:
            return [self._close_action(conn, TcpClose.FRAME_TOO_LARGE)]
        conn.last_seen = now
        out: list[Forward | AnswerHealth | CloseConn] = []
        for packet in packets:
            if not packet:
                self.drops[TcpDrop.EMPTY] += 1
            elif conn.transceiver is not None:
                out.append(Forward(conn.header, conn.transceiver, packet))
            else:
                action = self._first(conn, packet, now)
                out.append(action)
                if isinstance(action, CloseConn):
                    break
        return out

    def _first(
        self, conn: TcpConn, packet: bytes, now: float
    ) -> Forward | AnswerHealth | CloseConn:
        """The first packet: a Binding request that binds the connection (RFC 6544 section 4)."""
        verdict = self.authorize(packet, conn.alias, now)
        if isinstance(verdict, Drop):
            not_binding = verdict.reason is DropReason.STUN_NOT_BINDING
            return self._close_action(
                conn, TcpClose.NOT_BINDING if not_binding else TcpClose.BAD_BINDING
            )
        if isinstance(verdict, AnswerHealth):  # a probe over TCP: answered, stays unbound
            return verdict
        if self._per_ufrag[verdict.ufrag] >= self.limits.max_per_ufrag:
            return self._close_action(conn, TcpClose.UFRAG_FULL)
        self._per_ufrag[verdict.ufrag] += 1
        conn.ufrag, conn.transceiver_id = verdict.ufrag, verdict.transceiver_id
        conn.transceiver = verdict.transceiver
        self.bound += 1
        return Forward(conn.header, verdict.transceiver, packet)

    def route(self, header: bytes, transceiver_id: int) -> SendToTcp | None:
        """The connection a transceiver frame with ``header`` goes back on (its own only)."""
        conn = self._by_header.get(header)
        if conn is None or conn.transceiver_id != transceiver_id:
            return None
        return conn.send

    def retarget(self, transceiver_id: int, address: Addr) -> None:
        """A transceiver moved (registry): its connections follow it."""
        for conn in self.conns.values():
            if conn.transceiver_id == transceiver_id:
                conn.transceiver = address

    def expire(self, now: float) -> list[TcpConn]:
        """Close connections past the first-Binding deadline or idle past consent."""
        limits, gone = self.limits, []
        for conn in list(self.conns.values()):
            if conn.transceiver is None and now - conn.opened > limits.first_timeout:
                self.close(conn, TcpClose.FIRST_TIMEOUT)
                gone.append(conn)
            elif now - conn.last_seen > limits.idle_timeout:
                self.close(conn, TcpClose.IDLE)
                gone.append(conn)
        return gone

    def _close_action(self, conn: TcpConn, reason: TcpClose) -> CloseConn:
        self.close(conn, reason)
        return CloseConn(reason)

    def close(self, conn: TcpConn, reason: TcpClose) -> bool:
        """Remove ``conn`` and free its alias (the one removal path); False if already gone."""
        if conn.closed is not None:
            return False
        conn.closed = reason
        self.closes[reason] += 1
        del self.conns[conn.conn_id]
        del self._by_header[conn.header]
        self.aliases.free(conn.alias_index)
        _decrement(self._per_ip, conn.peer_ip)
        if conn.ufrag is not None:
            _decrement(self._per_ufrag, conn.ufrag)
        return True

    def counters(self) -> dict[str, int]:
        """Heartbeat counters: connections now, accepted, bound, closes, rejects and drops."""
        counts = {"tcp_connections": len(self.conns), "tcp_accepted": self.accepted,
                  "tcp_bound": self.bound, "tcp_forwarded_in": self.forwarded_in,
                  "tcp_forwarded_out": self.forwarded_out}
        counts.update({f"tcp_closed_{r.value}": self.closes[r] for r in TcpClose})
        counts.update({f"tcp_rejected_{r.value}": self.rejects[r] for r in TcpReject})
        counts.update({f"tcp_drop_{r.value}": self.drops[r] for r in TcpDrop})
        return counts


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
