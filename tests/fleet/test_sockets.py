"""``fleet.sockets`` on real loopback sockets: binding, and the kernel's receive timestamps."""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import pytest

from fleet.sockets import (
    PKTINFO_SPACE,
    bind_udp,
    enable_drop_counts,
    enable_packet_info,
    enable_receive_timestamps,
    is_wildcard,
    packet_local,
    receive_fresh,
    source_ancillary,
)


def test_bind_udp_reuse_port_lets_two_workers_share_a_port() -> None:
    with contextlib.closing(bind_udp(("127.0.0.1", 0), buffer=1 << 20, reuse_port=True)) as one:
        port = one.getsockname()[1]
        with contextlib.closing(bind_udp(("127.0.0.1", port), reuse_port=True)) as two:
            assert two.getsockname()[1] == port and not two.getblocking()
        with pytest.raises(OSError):
            bind_udp(("127.0.0.1", port))  # without SO_REUSEPORT the port is taken


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_TIMESTAMPNS is Linux")
def test_receive_fresh_skips_datagrams_that_waited_too_long() -> None:
    with contextlib.closing(bind_udp(("127.0.0.1", 0))) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        assert enable_receive_timestamps(rx)
        target = rx.getsockname()
        for index in range(3):
            tx.sendto(b"old%d" % index, target)
        time.sleep(0.3)
        sent = time.time()
        tx.sendto(b"new", target)
        time.sleep(0.05)
        buf = bytearray(64)
        seen: list[float | None] = []

        def fresh(received_at: float | None) -> bool:
            seen.append(received_at)
            return received_at is not None and time.time() - received_at < 0.2

        size, source = receive_fresh(rx, [buf], fresh, limit=10) or (0, None)
        assert bytes(buf[:size]) == b"new" and source[1] == tx.getsockname()[1]
        assert len(seen) == 4 and all(at is not None for at in seen)
        assert abs(seen[3] - sent) < 0.05  # type: ignore[operator]
        assert receive_fresh(rx, [buf], fresh, limit=10) is None  # EAGAIN


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RXQ_OVFL is Linux")
def test_receive_fresh_reports_the_kernels_drop_count_at_a_full_queue() -> None:
    with contextlib.closing(bind_udp(("127.0.0.1", 0), buffer=4096)) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        assert enable_drop_counts(rx)
        for _ in range(200):  # far more than a 4 KB queue holds
            tx.sendto(b"x" * 200, rx.getsockname())
        buf = bytearray(512)
        counts: list[int] = []
        while receive_fresh(rx, [buf], lambda at: True, limit=1, dropped=counts.append):
            pass
        tx.sendto(b"after", rx.getsockname())  # queued after the drops: it carries their count
        assert receive_fresh(rx, [buf], lambda at: True, limit=1, dropped=counts.append)
        assert counts and 0 < counts[-1] < 200 and bytes(buf[:5]) == b"after"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_PKTINFO is Linux's")
@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_packet_info_reports_the_destination_and_picks_the_reply_source(bind: str) -> None:
    """On loopback: sent to 127.0.0.2, reported as such, and the reply leaves from it (without
    the ancillary data the kernel would pick 127.0.0.1 for a 127.0.0.1 peer)."""
    with contextlib.closing(bind_udp((bind, 0))) as wild, \
            contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as peer:
        assert is_wildcard(wild.getsockname()[:2]) and enable_packet_info(wild)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2)
        wild.setblocking(True)
        wild.settimeout(2)
        port = wild.getsockname()[1]
        for target, local in (("127.0.0.2", bytes([127, 0, 0, 2])),
                              ("127.0.0.1", bytes([127, 0, 0, 1]))):
            peer.sendto(b"ping", (target, port))
            _, ancdata, _, source = wild.recvmsg(64, PKTINFO_SPACE)
            expected = local if bind == "0.0.0.0" else bytes(10) + b"\xff\xff" + local
            assert packet_local(ancdata) == expected
            wild.sendmsg([b"pong"], source_ancillary(expected), 0, source)
            assert peer.recvfrom(64) == (b"pong", (target, port))
        wild.sendto(b"plain", source)  # the kernel's choice for a 127.0.0.1 peer
        assert peer.recvfrom(64)[1] == ("127.0.0.1", port)
    assert not is_wildcard(("127.0.0.1", 1))
