"""ICE-TCP through the relay against the UDP path, same run, same relay process.

The real ``relays.daemon.Relay`` with its TCP listener, pinned to ``RELAY_CPU``, forwards to an
echo target (the stand-in transceiver reflects every frame back to the relay) on
``ENDPOINT_CPU``, where the clients run too. Clients are 50 UDP sockets (flows learned from
Binding requests) or 50 TCP connections (bound by a framed Binding, RFC 4571).

- Latency: one ping at a time at a fixed rate, round trip client -> relay -> echo -> relay ->
  client; TCP's added latency is (TCP RTT p50 - UDP RTT p50) / 2 traversals.
- CPU per forwarded packet: the clients send at a fixed rate (both directions forwarded); the
  relay's CPU time divided by the packets it forwarded, UDP vs TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from typing import Any

import psutil
import redis
import uvloop

from bench.common import BENCH_REDIS_URL, ENDPOINT_CPU, RELAY_CPU, Row, percentile, pin
from bench.relay import (
    CTX,
    KEYRING,
    PAYLOAD,
    SHARD,
    TRANSCEIVER_ID,
    _free_udp,
    _reflector,
    binding_request,
)
from fleet import addresses, keys
from fleet.addresses import Addr
from relays.tcpmux import LENGTH, pack_frame

CLIENTS = 50


def _free_tcp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay_server(public: int, internal: int, tcp: int, cpu: int, count: Any, ready: Any) -> None:
    from relays.daemon import Relay, RelayConfig
    from relays.tcpmux import TcpLimits

    pin(cpu)
    config = RelayConfig(shard=SHARD, public=("127.0.0.1", public),
                         internal=("127.0.0.1", internal), redis_url=BENCH_REDIS_URL,
                         keyring=KEYRING, tcp=("127.0.0.1", tcp),
                         tcp_limits=TcpLimits(max_per_ip=1000, max_per_ufrag=1000))

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Relay(config) as relay:
            ready.set()
            while not stop.is_set():
                core = relay.core
                count.value = (core.forwarded_in + core.forwarded_out + core.tcp.forwarded_in
                               + core.tcp.forwarded_out)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    uvloop.run(main())


class _Clients:
    """``CLIENTS`` sockets through the relay, UDP or TCP, each with a learned/bound route."""

    def __init__(self, kind: str, udp: Addr, tcp: Addr) -> None:
        self.kind = kind
        self.socks: list[socket.socket] = []
        self._bufs: dict[socket.socket, bytearray] = {}
        for index in range(CLIENTS):
            if kind == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                s.connect(udp)
                s.send(binding_request(s.getsockname()[1]))
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.connect(tcp)
                s.sendall(pack_frame(binding_request(40000 + index)))
                self._bufs[s] = bytearray()
            self.socks.append(s)
        time.sleep(0.3)
        for s in self.socks:  # the echoed Bindings
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while self.recv(s) is not None:
                    pass

    def send(self, s: socket.socket, body: bytes) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            s.send(body if self.kind == "udp" else pack_frame(body))

    def recv(self, s: socket.socket) -> bytes | None:
        """One packet if one is complete (``BlockingIOError`` when none is queued)."""
        if self.kind == "udp":
            return s.recv(2048)
        buf = self._bufs[s]
        while len(buf) < 2 or len(buf) < 2 + LENGTH.unpack_from(buf)[0]:
            data = s.recv(65536)
            if not data:
                return None
            buf += data
        size = LENGTH.unpack_from(buf)[0]
        packet = bytes(buf[2:2 + size])
        del buf[:2 + size]
        return packet

    def close(self) -> None:
        for s in self.socks:
            s.close()


def _ping(clients: _Clients, rate: float, samples: int) -> tuple[list[float], int]:
    rtts: list[float] = []
    lost = 0
    interval, due = 1.0 / rate, time.perf_counter()
    body = b"\x80" + bytes(PAYLOAD - 9)
    for n in range(samples):
        s = clients.socks[n % CLIENTS]
        due += interval
        stamp = time.perf_counter_ns().to_bytes(8, "big")
        clients.send(s, body + stamp)
        deadline = time.perf_counter() + 0.5
        while True:
            try:
                reply = clients.recv(s)
            except (BlockingIOError, ConnectionRefusedError):  # an ICMP error: the ping is lost
                if time.perf_counter() > deadline:
                    lost += 1
                    break
                continue
            if reply is not None and reply[-8:] == stamp:
                rtts.append((time.perf_counter_ns() - int.from_bytes(stamp, "big")) / 1000)
                break
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    return rtts, lost


def _load(clients: _Clients, rate: float, seconds: float) -> None:
    """Send at ``rate`` packets/s over every client, draining replies as they come."""
    body = b"\x80" + bytes(PAYLOAD - 1)
    interval, due = CLIENTS / rate, time.perf_counter()
    end = due + seconds
    while due < end:
        for s in clients.socks:
            clients.send(s, body)
        for s in clients.socks:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while clients.recv(s) is not None:
                    pass
        due += interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def _client_proc(kind: str, udp: Addr, tcp: Addr, rate: float, samples: int, load_rate: float,
                 seconds: float, results: Any, go: Any) -> None:
    pin(ENDPOINT_CPU)
    clients = _Clients(kind, udp, tcp)
    try:
        rtts, lost = _ping(clients, rate, samples)
        results.put((rtts, lost))
        go.wait(30)
        _load(clients, load_rate, seconds)
        results.put(None)
    finally:
        clients.close()


def measure(quick: bool) -> dict[str, tuple[float, float, float, int]]:
    """Per kind, best of interleaved rounds: (RTT p50 us, RTT p99 us, relay CPU us per
    forwarded packet, ping losses summed)."""
    r = redis.Redis.from_url(BENCH_REDIS_URL)
    r.flushdb()
    xcvr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    xcvr.bind(("127.0.0.1", 0))
    xcvr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    r.hset(keys.TRANSCEIVERS_KEY, str(TRANSCEIVER_ID), addresses.format_addr(xcvr.getsockname()))
    public, internal, tcp = _free_udp(), _free_udp(), _free_tcp()
    count, target_count = CTX.Value("d", 0.0), CTX.Value("d", 0.0)
    ready, echo_ready = CTX.Event(), CTX.Event()
    relay = CTX.Process(target=_relay_server, args=(public, internal, tcp, RELAY_CPU, count,
                                                    ready))
    echo = CTX.Process(target=_reflector, args=(xcvr, ENDPOINT_CPU, target_count, echo_ready))
    out: dict[str, tuple[float, float, float, int]] = {}
    samples, seconds, rounds = (2000, 2.0, 1) if quick else (3000, 3.0, 3)
    try:
        relay.start()
        echo.start()
        if not (ready.wait(20) and echo_ready.wait(20)):
            raise RuntimeError("relay or echo target did not start")
        server = psutil.Process(relay.pid)
        for kind in ("udp", "tcp") * rounds:  # interleaved; the least disturbed round counts
            results, go = CTX.Queue(), CTX.Event()
            proc = CTX.Process(target=_client_proc, args=(
                kind, ("127.0.0.1", public), ("127.0.0.1", tcp), 2000.0, samples, 20000.0,
                seconds, results, go))
            proc.start()
            rtts, lost = results.get(timeout=samples / 2000 * 4 + 120)  # a loaded machine
            c0, cpu0 = count.value, _cpu(server)
            go.set()
            results.get(timeout=seconds + 60)
            time.sleep(0.1)
            c1, cpu1 = count.value, _cpu(server)
            proc.join(10)
            per_packet = (cpu1 - cpu0) / max(c1 - c0, 1) * 1e6
            got = (percentile(rtts, 50), percentile(rtts, 99), per_packet, lost)
            old = out.get(kind)
            out[kind] = got if old is None else (
                min(old[0], got[0]), min(old[1], got[1]), min(old[2], got[2]), old[3] + got[3])
    finally:
        for proc in (relay, echo):
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()
            proc.join(10)
        xcvr.close()
        r.flushdb()
    return out


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def run(quick: bool) -> list[Row]:
    m = measure(quick)
    udp, tcp = m["udp"], m["tcp"]
    return [
        Row("tcp: RTT p50 through the relay", tcp[0], "us", baseline=udp[0],
            ratio=tcp[0] / udp[0], note=f"UDP path = baseline; 2000 pings/s over {CLIENTS} "
            f"clients; p99 {tcp[1]:.0f} vs {udp[1]:.0f} us; lost {tcp[3]}/{udp[3]}"),
        Row("tcp: added per traversal vs UDP, p50", (tcp[0] - udp[0]) / 2, "us",
            note="(TCP RTT p50 - UDP RTT p50) / 2 traversals, same relay, same run"),
        Row("tcp: relay CPU per forwarded packet", tcp[2], "us", baseline=udp[2],
            ratio=tcp[2] / udp[2], note="20k pkt/s offered + echoed, 200 B; UDP = baseline"),
    ]
