"""Which address a request really comes from, behind trusted proxies (pure, no I/O).

X-Forwarded-For is a comma list that each proxy extends on the right, so only the hops
appended by proxies we trust are believable: walk it from the right and stop at the first
address that is not one of ours. Everything left of that is client-controlled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(specs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (a bare address is a /32 or /128); blank entries are ignored."""
    networks: list[IPNetwork] = []
    for spec in specs:
        text = spec.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            raise ValueError(f"bad trusted proxy CIDR {spec!r}") from None
    return tuple(networks)


def parse_ip(text: str) -> IPAddress | None:
    """Parse one address as proxies write it (``a.b.c.d``, ``a.b.c.d:port``, ``[v6]:port``,
    ``v6``); IPv4-mapped IPv6 becomes IPv4. ``None`` when it is not an address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; an IPv6 address has at least two colons
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    # ``in`` is simply False across IP versions, so mixed lists need no special case.
    return any(address in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """Return the client's address: the TCP ``peer`` unless it is a trusted proxy, then the
    right-most X-Forwarded-For hop that is not trusted (all trusted: the left-most one).

    A malformed hop stops the walk at the last trusted hop (or the peer): skipping it would
    let a client-written entry further left through.
    """
    peer_address = parse_ip(peer)
    if peer_address is None:
        return peer
    if not forwarded_for or not is_trusted(peer_address, trusted):
        return str(peer_address)
    nearest_trusted = peer_address
    for hop in reversed(forwarded_for.split(",")):
        if not hop.strip():  # ", ," and trailing commas: nothing there
            continue
        address = parse_ip(hop)
        if address is None:
            # "unknown" or garbage breaks the chain: whatever is left of it is unverifiable,
            # so never skip past it into client-written entries.
            break
        if not is_trusted(address, trusted):
            return str(address)
        nearest_trusted = address
    return str(nearest_trusted)
