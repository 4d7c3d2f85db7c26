"""Host/port addresses: one type, one parser, one formatter, one argparse type."""

from __future__ import annotations

import argparse
import ipaddress

Addr = tuple[str, int]


def format_addr(addr: Addr) -> str:
    """``host:port`` (``parse_addr`` splits on the last colon, so IPv6 needs no brackets)."""
    return f"{addr[0]}:{addr[1]}"


def parse_addr(text: str, *, allow_port_zero: bool = False) -> Addr:
    """Parse ``host:port`` (IPv6 bracketed or not: split on the last colon)."""
    host, sep, port = text.rpartition(":")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 0xFFFF:
        raise ValueError("bad address")
    return host.strip("[]"), int(port)


def addr_argument(text: str) -> Addr:
    """argparse ``type`` for the daemons' HOST:PORT options (port 0: the kernel picks)."""
    try:
        return parse_addr(text, allow_port_zero=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: want HOST:PORT") from None


def is_wildcard(host: str) -> bool:
    """True for ``0.0.0.0`` / ``::``: a bind address no peer can send to, so never advertised."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: not ours to judge


def sockname_addr(sockname: tuple[str, int] | tuple[str, int, int, int]) -> Addr:
    """The ``(host, port)`` of a v4 or v6 ``getsockname()``/``recvfrom()`` result."""
    return sockname[0], sockname[1]


def canonical_addr(address: Addr, *, v6: bool) -> Addr:
    """Spell ``address`` as ``recvfrom`` reports it on a v6 (v4-mapped) or v4 socket."""
    ip = ipaddress.ip_address(address[0])
    if v6 and ip.version == 4:
        return f"::ffff:{ip}", address[1]
    mapped = getattr(ip, "ipv4_mapped", None)
    if not v6 and mapped is not None:
        return str(mapped), address[1]
    return str(ip), address[1]
