"""A lossy UDP path on loopback: a WebRTC client on one side, a relay (or a peer) on the other.

``LossyLink`` owns two sockets. What arrives on ``near`` (the client's side) is sent on from
``far`` to ``target``; what arrives on ``far`` goes back from ``near`` to the last client address
seen. ``drop(direction, datagram)`` decides each datagram's fate (``"up"``: client to target,
``"down"``: back). The client is pointed at ``near`` by rewriting its answer's candidates
(``point_candidates``). Used by the set-up-under-loss benchmark and the DTLS retransmission test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from fleet.addresses import Addr

Drop = Callable[[str, bytes], bool]


def is_dtls(datagram: bytes) -> bool:
    """RFC 7983 §7: first byte 20..63 is DTLS."""
    return bool(datagram) and 19 < datagram[0] < 64


def random_loss(rate: float, seed: int) -> Drop:
    """Drop each datagram, either way, independently with probability ``rate``."""
    rng = random.Random(seed)
    return lambda _direction, _datagram: rate > 0 and rng.random() < rate


def point_candidates(sdp: str, addr: Addr) -> str:
    """``sdp`` with one ``a=candidate`` (the first UDP one) moved to ``addr``, the rest dropped."""
    out, done = [], False
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if done or parts[2].lower() != "udp":
                continue
            parts[4], parts[5], done = addr[0], str(addr[1]), True
            line = " ".join(parts)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


@dataclass
class _Side(asyncio.DatagramProtocol):
    on_datagram: Callable[[bytes, Addr], None]
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


@dataclass
class LossyLink:
    target: Addr
    drop: Drop
    host: str = "127.0.0.1"
    dropped: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    passed: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    client: Addr | None = None  # learned from the client's datagrams (or known beforehand)
    _near: _Side | None = None
    _far: _Side | None = None

    async def start(self) -> LossyLink:
        loop = asyncio.get_running_loop()
        _, self._near = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_client), local_addr=(self.host, 0))
        _, self._far = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_target), local_addr=(self.host, 0))
        return self

    @property
    def near(self) -> Addr:
        """Where the client sends (its answer's candidate)."""
        return self._sockname(self._near)

    @property
    def far(self) -> Addr:
        """Where the target's datagrams come from (and where a peer target may send)."""
        return self._sockname(self._far)

    @staticmethod
    def _sockname(side: _Side | None) -> Addr:
        assert side is not None and side.transport is not None, "not started"
        host, port = side.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def _from_client(self, data: bytes, addr: Addr) -> None:
        self.client = addr
        if self._count("up", data) and self._far is not None and self._far.transport:
            self._far.transport.sendto(data, self.target)

    def _from_target(self, data: bytes, addr: Addr) -> None:
        if self.client is None or self._near is None or self._near.transport is None:
            return
        if self._count("down", data):
            self._near.transport.sendto(data, self.client)

    def _count(self, direction: str, data: bytes) -> bool:
        if self.drop(direction, data):
            self.dropped[direction] += 1
            return False
        self.passed[direction] += 1
        return True

    def close(self) -> None:
        for side in (self._near, self._far):
            if side is not None and side.transport is not None:
                side.transport.close()
