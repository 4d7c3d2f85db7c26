"""The TUN delay line in a real WAN namespace: one-way delay accuracy and loss fraction."""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.netns import inside, ipn, remove_namespaces, sh, sysctl, wan_policy

pytestmark = pytest.mark.lab

WAN, A, B = "vel-dt-wan", "vel-dt-a", "vel-dt-b"
A_IP, B_IP = "81.2.69.2", "198.18.3.10"
ONE_WAY_MS = 20.0
PORT = 9000
RATE_PPS = 1000
STAMP = struct.Struct("!Id")  # sequence number, send time (time.time)
SO_TIMESTAMPNS = 35  # asm-generic/socket.h: arrival time (CLOCK_REALTIME) as ancillary data
TIMESPEC = struct.Struct("@qq")
# The tail the delay line may add: the fleet tests allow 5 ms on a measured RTT, and the tail
# is where a busy machine shows (softirqs deferred to ksoftirqd, which no chrt covers).
TAIL_MS = 5.0


@pytest.fixture(scope="module")
def wan(lab_capable: None) -> Iterator[None]:
    remove_namespaces([WAN, A, B])
    for ns in (WAN, A, B):
        sh("ip", "netns", "add", ns)
        ipn(ns, "link", "set", "lo", "up")
    for ns, peer, net, host_ip in ((A, "wa", "81.2.69", A_IP), (B, "wb", "198.18.3", B_IP)):
        ipn(WAN, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ipn(WAN, "addr", "add", f"{net}.1/24", "dev", peer)
        ipn(WAN, "link", "set", peer, "up")
        ipn(ns, "addr", "add", f"{host_ip}/24", "dev", "eth0")
        ipn(ns, "link", "set", "eth0", "up")
        ipn(ns, "route", "add", "default", "via", f"{net}.1")
    wan_policy(WAN)
    sysctl(WAN, net__ipv4__conf__wa__rp_filter="0", net__ipv4__conf__wb__rp_filter="0")
    yield
    remove_namespaces([WAN, A, B])


def start_line(tmp_path: Path, loss: float) -> subprocess.Popen[bytes]:
    config = {"sites": [["81.2.69.0/24", "eu"], ["198.18.3.0/24", "asia"]],
              "one_way_ms": [["eu", "asia", ONE_WAY_MS]], "loss": loss}
    path = tmp_path / "delay.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        ["ip", "netns", "exec", WAN, "chrt", "-f", "20", sys.executable, "-m", "lab.delayline",
         "--config", str(path)], cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    with inside(B):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((B_IP, PORT))
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    with inside(A):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect((B_IP, PORT))
    rx.setblocking(False)
    yield tx, rx
    tx.close()
    rx.close()


def drain(rx: socket.socket, delays: dict[int, float]) -> None:
    """Kernel arrival stamps: the delay line is measured, not this process's scheduling."""
    while True:
        try:
            data, ancillary, _flags, _addr = rx.recvmsg(2048, 64)
        except BlockingIOError:
            return
        seq, sent = STAMP.unpack_from(data)
        arrived = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = TIMESPEC.unpack(value[:TIMESPEC.size])
                arrived = seconds + nanos / 1e9
        delays[seq] = arrived - sent


def blast(tx: socket.socket, rx: socket.socket, count: int) -> dict[int, float]:
    """Send ``count`` stamped packets at RATE_PPS; return seq -> one-way delay (s)."""
    delays: dict[int, float] = {}
    start = time.monotonic()
    for seq in range(count):
        due = start + seq / RATE_PPS
        while (wait := due - time.monotonic()) > 0:
            select.select([rx], [], [], wait)
            drain(rx, delays)
        tx.send(STAMP.pack(seq, time.time()) + bytes(100))
    deadline = time.monotonic() + ONE_WAY_MS / 1000 + 1.0
    while time.monotonic() < deadline and len(delays) < count:
        select.select([rx], [], [], 0.05)
        drain(rx, delays)
    return delays


@contextmanager
def real_time() -> Iterator[None]:
    """SCHED_FIFO for the sender while it stamps and sends, as the delay line runs: a
    preemption between ``time.time()`` and ``send`` would count as the line's delay."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        yield
    finally:
        os.sched_setscheduler(0, before[0], before[1])


def wait_through(tx: socket.socket, rx: socket.socket) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if blast(tx, rx, 1):
            return
    pytest.fail("the delay line never forwarded a packet")


def test_one_way_delay_within_a_millisecond_at_1k_pps(
    wan: None, sockets: tuple[socket.socket, socket.socket], tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    tx, rx = sockets
    line = start_line(tmp_path, loss=0.0)
    try:
        wait_through(tx, rx)
        with real_time():
            delays = blast(tx, rx, 1000)
    finally:
        line.terminate()
        line.wait(timeout=10)
    ms = sorted(d * 1000 for d in delays.values())
    median, mean = statistics.median(ms), statistics.fmean(ms)
    p90, p99 = ms[int(len(ms) * 0.9)], ms[int(len(ms) * 0.99) - 1]
    report(f"delay line: {len(ms)}/1000 at {RATE_PPS} pps, configured {ONE_WAY_MS} ms: "
           f"median {median:.3f} mean {mean:.3f} p90 {p90:.3f} p99 {p99:.3f} "
           f"min {ms[0]:.3f} max {ms[-1]:.3f} ms")
    assert len(ms) == 1000
    assert ONE_WAY_MS <= ms[0]
    # SCHED_FIFO (chrt) keeps the tail short on a busy 2-core machine too (at nice 0 its p99
    # was 25-38 ms at load 9); with both ends real-time, p99 was 20.2-20.6 ms here and 23.5 ms
    # once in CI, so the tail is bounded by what the fleet's RTT checks tolerate.
    assert abs(median - ONE_WAY_MS) < 1.0
    assert abs(mean - ONE_WAY_MS) < 1.0
    assert p99 - ONE_WAY_MS < TAIL_MS


def test_loss_fraction(
    wan: None, sockets: tuple[socket.socket, socket.socket], tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    tx, rx = sockets
    line = start_line(tmp_path, loss=0.2)
    try:
        wait_through(tx, rx)
        delays = blast(tx, rx, 2000)
    finally:
        line.terminate()
        line.wait(timeout=10)
    lost = 1 - len(delays) / 2000
    report(f"delay line: loss configured 0.20, measured {lost:.3f}")
    assert 0.16 < lost < 0.24


def test_without_the_delay_line_nothing_crosses(
    wan: None, sockets: tuple[socket.socket, socket.socket]
) -> None:
    """Forwarded public traffic has no path but the TUN: the delay is not a side effect."""
    tx, rx = sockets
    assert blast(tx, rx, 20) == {}
    assert os.geteuid() == 0
