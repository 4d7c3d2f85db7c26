"""What the relay core decides, as values: the actions the shell carries out, drop reasons."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet.addresses import Addr


class DropReason(enum.StrEnum):
    """Why a datagram was not forwarded (heartbeat counter ``drop_<value>``)."""

    EMPTY = "empty"
    STUN_NOT_BINDING = "stun_not_binding"  # STUN range, but not a Binding request
    BAD_STUN = "bad_stun"  # a Binding request without a usable USERNAME
    BAD_UFRAG = "bad_ufrag"  # not minted with our keyring
    WRONG_SHARD = "wrong_shard"
    UNKNOWN_TRANSCEIVER = "unknown_transceiver"  # not in the registry (yet)
    REDIS_MISS = "redis_miss"  # unknown non-STUN source with no flow in Redis (negative-cached)
    REDIS_DOWN = "redis_down"  # held for a lookup that failed
    LOOKUP_BUSY = "lookup_busy"  # max_lookups clients already waiting
    LOOKUP_QUEUE_FULL = "lookup_queue_full"  # PENDING_PER_CLIENT datagrams already held
    FRAME_UNREGISTERED = "frame_unregistered"  # frame from an address not in the registry
    FRAME_MALFORMED = "frame_malformed"
    ALIAS_SOURCE = "alias_source"  # a UDP source in the ICE-TCP alias range (spoofed)
    FRAME_TCP_GONE = "frame_tcp_gone"  # for an ICE-TCP alias whose connection is closed
    UFRAG_FLOWS_FULL = "ufrag_flows_full"  # max_flows_per_ufrag sources already learned
    LEARN_RATE = "learn_rate"  # more new flows per second than the learning token bucket allows
    STALE = "stale"  # waited longer than max_queue_age in the socket (the process was frozen)
    RECV_ERROR = "recv_error"  # counted by the shell
    SEND_ERROR = "send_error"  # counted by the shell
    RXQ_OVERFLOW = "rxq_overflow"  # the kernel's receive queue was full (SO_RXQ_OVFL; shell)


class DrainState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``header + payload`` to the transceiver at ``transceiver``."""

    header: bytes
    transceiver: Addr
    payload: bytes | memoryview


# The local address a client's datagram was sent to (4 or 16 bytes, packed), reported by the
# shell of a relay bound to a wildcard address (IP_PKTINFO); None elsewhere. Opaque to the core:
# it is stored per flow and handed back with every reply to that client, which the shell sends
# from it (a multihomed host would otherwise answer from its routing source address).
Local = bytes | None


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send the frame's payload (from ``offset``) to ``client``, from ``local`` if known."""

    client: Addr
    offset: int
    local: Local = None


@dataclass(frozen=True, slots=True)
class AnswerHealth:
    """Send ``response`` (a Binding success, RFC 8489 section 14.2) to ``client``, from
    ``local`` (the address the request was sent to) if known."""

    client: Addr
    response: bytes
    local: Local = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """The datagram is held; a Redis lookup for ``client`` is due (wake the lookup loop)."""

    client: Addr


@dataclass(frozen=True, slots=True)
class Drop:
    reason: DropReason
    detail: str = ""
