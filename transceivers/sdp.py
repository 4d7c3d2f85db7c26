"""SDP rules of a transceiver session: what is dropped from an offer, what an answer may carry
(pure string functions over aiortc's SDP parser)."""

from __future__ import annotations

from aioice.candidate import candidate_foundation
from aiortc.sdp import SessionDescription

from fleet.addresses import Addr

_DROPPED_ATTRS = ("a=candidate", "a=end-of-candidates")
TCP_HOST_TYPE_PREFERENCE = 125  # below UDP host's 126 (RFC 8445 5.1.2.2): UDP is preferred
PASSIVE_DIRECTION_PREFERENCE = 4  # RFC 6544 section 4.2: host active 6, passive 4, S-O 2
OTHER_PREFERENCE = 8191  # RFC 6544 section 4.2: the low 13 bits of the local preference


def strip_candidates(sdp: str) -> str:
    """Drop ``a=candidate`` and ``a=end-of-candidates`` lines (RFC 8839 section 5.1, 5.2).

    Client candidates would make aioice open sockets (mDNS) or prune every component; the
    transceiver learns the client's address from its first STUN request (peer-reflexive).
    """
    lines = sdp.splitlines()
    kept = [line for line in lines if not line.startswith(_DROPPED_ATTRS)]
    return "\r\n".join(kept) + "\r\n"


def parse_offer(sdp: str) -> SessionDescription:
    """Parse an offer; ``ValueError("bad sdp")`` if unparsable, ``("no audio")`` without audio."""
    if not sdp.startswith("v=0"):
        raise ValueError("bad sdp")
    try:
        description = SessionDescription.parse(sdp)  # asserts and indexes on bad input
    except (AssertionError, AttributeError, IndexError, KeyError, TypeError, ValueError):
        raise ValueError("bad sdp") from None
    if not any(m.kind == "audio" and m.port != 0 for m in description.media):
        raise ValueError("no audio")
    return description


def answer_candidates(sdp: str) -> list[Addr]:
    """Return the (address, port) of every ``a=candidate`` line (RFC 8839 section 5.1)."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 6:
                raise ValueError("bad candidate")
            found.append((parts[4], int(parts[5])))
    return found


def tcp_candidate_priority(component: int = 1) -> int:
    """RFC 6544 section 4.2 priority of a passive TCP host candidate (RFC 8445 5.1.2.1 formula)."""
    local = (PASSIVE_DIRECTION_PREFERENCE << 13) | OTHER_PREFERENCE
    return (TCP_HOST_TYPE_PREFERENCE << 24) | (local << 8) | (256 - component)


def tcp_candidate(host: str, port: int, component: int = 1) -> str:
    """The ``a=candidate`` line of the relay's ICE-TCP port (RFC 6544 section 4.5)."""
    foundation = candidate_foundation("host", "tcp", host)
    return (f"a=candidate:{foundation} {component} tcp {tcp_candidate_priority(component)} "
            f"{host} {port} typ host tcptype passive")


def add_tcp_candidate(sdp: str, public: Addr, tcp_port: int) -> str:
    """Put the relay's TCP candidate after each of its UDP candidates (RFC 6544, RFC 8839)."""
    out: list[str] = []
    for line in sdp.splitlines():
        out.append(line)
        if line.startswith("a=candidate:"):
            parts = line.split()
            is_udp = len(parts) >= 6 and parts[2].lower() == "udp"
            if is_udp and (parts[4], int(parts[5])) == public:
                out.append(tcp_candidate(public[0], tcp_port, int(parts[1])))
    return "\r\n".join(out) + "\r\n"


def is_relay_only_answer(sdp: str, public: Addr, tcp_port: int = 0) -> bool:
    """True when the answer's only candidates are the relay's public address (UDP, and TCP on
    ``tcp_port`` if given)."""
    allowed = {public, (public[0], tcp_port)} if tcp_port else {public}
    candidates = answer_candidates(sdp)
    return bool(candidates) and all(c in allowed for c in candidates)
