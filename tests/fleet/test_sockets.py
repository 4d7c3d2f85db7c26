"""``fleet.sockets`` on real loopback sockets: binding, and the kernel's receive timestamps."""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import pytest

from fleet.sockets import (
    bind_udp,
    enable_drop_counts,
    enable_receive_timestamps,
    receive_fresh,
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
