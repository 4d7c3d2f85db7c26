"""The daemons' UDP socket: bound, non-blocking, large buffers (v4 or v6), receive timestamps."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from fleet.addresses import Addr


def bind_udp(addr: Addr, *, buffer: int = 0, reuse_port: bool = False) -> socket.socket:
    """Return a non-blocking UDP socket bound to ``addr``; ``reuse_port`` lets SO_REUSEPORT
    workers share it, ``buffer`` sizes SO_RCVBUF/SO_SNDBUF (best effort: the kernel caps it)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF) if buffer else ():
            with contextlib.suppress(OSError):  # capped by net.core.*mem_max
                sock.setsockopt(socket.SOL_SOCKET, option, buffer)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# Kernel receive timestamps (Linux ``SO_TIMESTAMPNS``, socket(7)): the time a datagram entered the
# socket's queue, delivered as a ``struct timespec`` (CLOCK_REALTIME) in ancillary data.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Python 3.11 lacks the constant
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@ll")  # tv_sec, tv_nsec
TIMESTAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
# ``SO_RXQ_OVFL`` (socket(7)): each datagram carries the socket's count of datagrams the kernel
# dropped so far, a ``uint32``; mostly because the receive queue was full.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_DROPPED = struct.Struct("@I")
CONTROL_SPACE = TIMESTAMP_SPACE + socket.CMSG_SPACE(_DROPPED.size)


def _enable_linux_option(sock: socket.socket, option: int) -> bool:
    """Turn on a Linux ``SOL_SOCKET`` option; False where it cannot (not Linux, refused)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True


def enable_receive_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel for receive timestamps on ``sock``; False where it cannot (not Linux)."""
    return _enable_linux_option(sock, SO_TIMESTAMPNS)


def enable_drop_counts(sock: socket.socket) -> bool:
    """Ask the kernel to report its drop count with each datagram; False where it cannot."""
    return _enable_linux_option(sock, SO_RXQ_OVFL)


def dropped_count(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The socket's running count of kernel drops from ``recvmsg`` ancillary data, if any."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= _DROPPED.size:
            return int(_DROPPED.unpack_from(data)[0])
    return None


def receive_time(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time (``time.time()`` scale) from ``recvmsg`` ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds * 1e-9
    return None


def receive_fresh(
    sock: socket.socket, buffers: list[bytearray], fresh: Callable[[float | None], bool], *,
    limit: int, dropped: Callable[[int], None] | None = None,
) -> tuple[int, Any] | None:
    """``recvmsg_into`` until ``fresh(receive time)`` holds for a datagram: return its ``(size,
    source)``; None on EAGAIN or after ``limit`` stale ones. Other ``OSError``s propagate.
    ``dropped`` is given the socket's kernel drop count (``enable_drop_counts``) when reported."""
    for _ in range(limit):
        try:
            size, ancdata, _, source = sock.recvmsg_into(buffers, CONTROL_SPACE)
        except BlockingIOError:
            return None
        if dropped is not None and (count := dropped_count(ancdata)) is not None:
            dropped(count)
        if fresh(receive_time(ancdata)):
            return size, source
    return None


# The local address a datagram was sent to, on a socket bound to a wildcard address (ip(7)
# ``IP_PKTINFO``, ipv6(7) ``IPV6_RECVPKTINFO``; a dual-stack v6 socket reports v4 peers'
# destinations v4-mapped). Sent back with a reply, it picks the reply's source address: without
# it a multihomed host answers from its routing source, which the client (or its NAT) drops.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Python 3.11 lacks the constant (Linux: 8)
_IN_PKTINFO = struct.Struct("@i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("@16sI")  # ipi6_addr, ipi6_ifindex
PKTINFO_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size)


def is_wildcard(addr: Addr) -> bool:
    """True for a bound address (``getsockname``) that is every local address (0.0.0.0, ::)."""
    return addr[0] in ("0.0.0.0", "::")


def enable_packet_info(sock: socket.socket) -> bool:
    """Ask the kernel for each datagram's local address on ``sock``; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def packet_local(ancdata: list[tuple[int, int, bytes]]) -> bytes | None:
    """The local address (4 or 16 bytes, packed) a datagram was sent to, from ``recvmsg``
    ancillary data on a socket with ``enable_packet_info``; None if not reported."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            return data[4:8]  # ipi_spec_dst: the local address the datagram was for
        if (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
                and len(data) >= _IN6_PKTINFO.size):
            return data[:16]
    return None


def source_ancillary(local: bytes) -> list[tuple[int, int, bytes]]:
    """``sendmsg`` ancillary data sending from ``local`` (as ``packet_local`` returns it); the
    interface is left to routing (index 0)."""
    if len(local) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local, bytes(4)))]
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(local, 0))]
