"""Relay data plane: packets/s through one relay worker and round-trip latency, beside baselines.

Processes (``multiprocessing`` fork), and where they run on this 2-core machine:

- the server under test, pinned to ``RELAY_CPU``: the real ``relays.daemon.Relay`` (real Redis,
  flows learned from STUN Binding requests with minted ufrags), or a minimal stdlib
  ``asyncio.DatagramProtocol`` forwarder doing the same framing job, or (direct baseline) the
  echo target itself, so the traffic goes straight to it without a relay in between;
- load generator / ping client and echo target, pinned to ``ENDPOINT_CPU``.

Throughput: 500 client ports send 200-byte datagrams to the public port while the stand-in
transceiver sends framed 200-byte datagrams to the internal port naming those clients (both
directions at once). Nobody reads the forwarded datagrams (the kernel drops them at the full
receive queue), so the endpoints' core only sends and the server's core is the bottleneck; the
rate is read from the server's own forwarded counter. Latency: ping-pong at a fixed rate through
a reflecting echo target (it returns each frame to the relay, which sends it to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import psutil
import redis
import uvloop
from aioice import stun

from bench.common import (
    BENCH_REDIS_URL,
    ENDPOINT_CPU,
    RELAY_CPU,
    Row,
    percentile,
    pin,
)
from relays import registry
from relays.framing import Addr, header_length, pack_header
from relays.stun import is_binding_request, parse_server_ufrag
from relays.ufrag import mint_ufrag, validate_ufrag

KEYRING = {1: b"bench-relay-secret"}
SHARD = 1
TRANSCEIVER_ID = 1
PAYLOAD = 200
TARGET_PPS = 200_000
TARGET_TRAVERSAL_US = 15.0
TARGET_VS_ASYNCIO = 4.0
CTX = mp.get_context("fork")



# servers under test ------------------------------------------------------------------------

def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay_server(public: int, internal: int, cpu: int, count: Any, ready: Any) -> None:
    from relays.daemon import Relay, RelayConfig

    pin(cpu)
    config = RelayConfig(shard=SHARD, public=("127.0.0.1", public),
                         internal=("127.0.0.1", internal), redis_url=BENCH_REDIS_URL,
                         keyring=KEYRING)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Relay(config) as relay:
            ready.set()
            while not stop.is_set():
                count.value = relay.forwarded_in + relay.forwarded_out
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    uvloop.run(main())  # as relays.daemon.run does in production


class _Public(asyncio.DatagramProtocol):
    """Minimal stdlib forwarder, client side: learn from a valid ufrag, frame, forward."""

    def __init__(self, fwd: _Forwarder) -> None:
        self.fwd = fwd

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        fwd = self.fwd
        header = fwd.headers.get(addr)
        if header is None:
            if not is_binding_request(data):
                return
            try:
                validate_ufrag(parse_server_ufrag(data), keys=KEYRING)
            except ValueError:
                return
            header = fwd.headers[addr] = pack_header(addr)
            fwd.clients[header] = addr
        assert fwd.internal is not None
        fwd.internal.sendto(header + data, fwd.target)
        fwd.forwarded += 1


class _Internal(asyncio.DatagramProtocol):
    """Minimal stdlib forwarder, transceiver side: strip the header, send to the client."""

    def __init__(self, fwd: _Forwarder) -> None:
        self.fwd = fwd

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        fwd = self.fwd
        if addr != fwd.target:
            return
        try:
            offset = header_length(data)
        except ValueError:
            return
        client = fwd.clients.get(data[:offset])
        if client is not None:
            assert fwd.public is not None
            fwd.public.sendto(data[offset:], client)
            fwd.forwarded += 1


class _Forwarder:
    def __init__(self, target: Addr) -> None:
        self.target = target
        self.headers: dict[Addr, bytes] = {}
        self.clients: dict[bytes, Addr] = {}
        self.public: asyncio.DatagramTransport | None = None
        self.internal: asyncio.DatagramTransport | None = None
        self.forwarded = 0


def _asyncio_server(public: int, internal: int, cpu: int, count: Any, ready: Any,
                    target: Addr) -> None:
    pin(cpu)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        fwd = _Forwarder(target)
        fwd.public, _ = await loop.create_datagram_endpoint(
            lambda: _Public(fwd), local_addr=("127.0.0.1", public))
        fwd.internal, _ = await loop.create_datagram_endpoint(
            lambda: _Internal(fwd), local_addr=("127.0.0.1", internal))
        for transport in (fwd.public, fwd.internal):  # the same buffers as RelayConfig's
            sock = transport.get_extra_info("socket")
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        ready.set()
        while not stop.is_set():
            count.value = fwd.forwarded
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    asyncio.run(main())


def _reflector(sock: socket.socket, cpu: int, count: Any, ready: Any) -> None:
    """Echo target: return every datagram to its sender (a frame goes back to the relay)."""
    pin(cpu)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    buf = bytearray(65535)
    view = memoryview(buf)
    recv, send = sock.recvfrom_into, sock.sendto
    sock.setblocking(True)  # no timeout: a timeout costs a poll() per call
    ready.set()
    n = 0
    while True:
        for _ in range(64):
            size, source = recv(buf)
            with contextlib.suppress(OSError):  # full queue or ICMP: drop like a router
                send(view[:size], source)
            n += 1
        count.value = n


# endpoints ---------------------------------------------------------------------------------

def binding_request(port: int) -> bytes:
    """A STUN Binding request whose USERNAME carries a validly minted ufrag for shard 1."""
    ufrag = mint_ufrag(shard=SHARD, transceiver=TRANSCEIVER_ID, key_id=1, key=KEYRING[1],
                       nonce=port.to_bytes(4, "big"))
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:bench"
    return bytes(message)


def _clients(count: int, server: Addr, *, learn: bool) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.connect(server)
        socks.append(s)
    if learn:
        for s in socks:
            s.send(binding_request(s.getsockname()[1]))
            time.sleep(0.0002)  # paced: a burst would overflow a default-sized receive queue
    return socks


def _blaster(server: Addr, internal: Addr | None, xcvr: socket.socket | None, ports: int,
             seconds: float, cpu: int, learn: bool) -> None:
    """Send 200-byte datagrams from ``ports`` clients (and frames naming them) for ``seconds``."""
    pin(cpu)
    socks = _clients(ports, server, learn=learn)
    time.sleep(0.3)  # flows learned (and written) before the blast
    payload = b"\x80" + bytes(PAYLOAD - 1)  # an RTP-looking first byte (RFC 7983)
    frames = [pack_header(s.getsockname()) + payload for s in socks]
    for s in socks:
        s.setblocking(False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s, frame in zip(socks, frames, strict=True):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                s.send(payload)
            if xcvr is not None and internal is not None:
                with contextlib.suppress(BlockingIOError):
                    xcvr.sendto(frame, internal)


def _pinger(server: Addr, ports: int, rate: float, samples: int, cpu: int, learn: bool,
            results: Any) -> None:
    """Ping-pong one datagram at a time at ``rate``/s over ``ports`` clients; RTTs in us."""
    pin(cpu)
    socks = _clients(ports, server, learn=learn)
    for s in socks:
        s.settimeout(0.5)
    if learn:  # drain the echoed Binding requests; keep the ports whose flow was learned
        learned = []
        for s in socks:
            s.settimeout(0.05 if learned else 1.0)
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                s.recv(2048)
                learned.append(s)
        socks, ports = learned, len(learned)
        for s in socks:
            s.settimeout(0.5)
    body = b"\x80" + bytes(PAYLOAD - 9)
    rtts: list[float] = []
    lost = 0
    interval = 1.0 / rate
    due = time.perf_counter()
    for n in range(samples):
        s = socks[n % ports]
        due += interval
        sent = time.perf_counter_ns()
        s.send(body + sent.to_bytes(8, "big"))
        try:
            while True:  # skip a late reply to an earlier ping on this socket
                reply = s.recv(2048)
                if reply[-8:] == sent.to_bytes(8, "big"):
                    break
            rtts.append((time.perf_counter_ns() - sent) / 1000)
        except (TimeoutError, ConnectionRefusedError):
            lost += 1
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    results.put((rtts, lost))


# orchestration -----------------------------------------------------------------------------

class _Setup:
    """One server under test (kind: relay, asyncio, direct) with its echo target socket."""

    def __init__(self, kind: str, server_cpu: int, *, reflect: bool) -> None:
        self.kind = kind
        self.count: Synchronized[float] = CTX.Value("d", 0.0)  # type: ignore[assignment]
        self.target_count: Synchronized[float] = CTX.Value("d", 0.0)  # type: ignore[assignment]
        self.xcvr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.xcvr.bind(("127.0.0.1", 0))
        self.xcvr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.target: Addr = self.xcvr.getsockname()
        self.public, self.internal = _free_udp(), _free_udp()
        self.procs: list[Any] = []
        ready = CTX.Event()
        if kind == "relay":
            r = redis.Redis.from_url(BENCH_REDIS_URL)
            r.flushdb()
            r.hset(registry.TRANSCEIVERS_KEY, str(TRANSCEIVER_ID),
                   registry.format_addr(self.target))
            proc = CTX.Process(target=_relay_server, args=(
                self.public, self.internal, server_cpu, self.count, ready))
        elif kind == "asyncio":
            proc = CTX.Process(target=_asyncio_server, args=(
                self.public, self.internal, server_cpu, self.count, ready, self.target))
        else:  # direct: the echo target is the server
            proc = CTX.Process(target=_reflector, args=(
                self.xcvr, server_cpu, self.count, ready))
            self.public = self.target[1]
        self._start(proc, ready)
        if reflect and kind != "direct":
            ready = CTX.Event()
            self._start(CTX.Process(target=_reflector, args=(
                self.xcvr, ENDPOINT_CPU, self.target_count, ready)), ready)

    def _start(self, proc: Any, ready: Any) -> None:
        proc.start()
        self.procs.append(proc)
        if not ready.wait(20):
            self.close()
            raise RuntimeError(f"{self.kind} server did not start")

    @property
    def server(self) -> Addr:
        return ("127.0.0.1", self.public)

    def close(self) -> None:
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        self.xcvr.close()
        if self.kind == "relay":
            redis.Redis.from_url(BENCH_REDIS_URL).flushdb()


@contextlib.contextmanager
def _running(kind: str, server_cpu: int, *, reflect: bool) -> Iterator[_Setup]:
    setup = _Setup(kind, server_cpu, reflect=reflect)
    try:
        yield setup
    finally:
        setup.close()


def throughput(kind: str, *, ports: int, seconds: float) -> tuple[float, float]:
    """(datagrams/s forwarded, datagrams per CPU-second of the server) under saturation.

    The second figure divides by the CPU time the server process actually got, so other load
    on the shared machine (or senders that cannot quite saturate it) does not hide its cost.
    """
    with _running(kind, RELAY_CPU, reflect=False) as setup:
        internal = ("127.0.0.1", setup.internal) if kind != "direct" else None
        xcvr = setup.xcvr if kind != "direct" else None
        blaster = CTX.Process(target=_blaster, args=(
            setup.server, internal, xcvr, ports, seconds + 1.0, ENDPOINT_CPU, kind != "direct"))
        blaster.start()
        server = psutil.Process(setup.procs[0].pid)
        time.sleep(1.2)  # learning + warm-up
        c0, t0, cpu0 = setup.count.value, time.monotonic(), _cpu(server)
        time.sleep(seconds - 0.4)
        c1, t1, cpu1 = setup.count.value, time.monotonic(), _cpu(server)
        blaster.join(seconds + 30)
        return (c1 - c0) / (t1 - t0), (c1 - c0) / max(cpu1 - cpu0, 1e-9)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def latency(kind: str, *, ports: int, rate: float, samples: int, server_cpu: int
            ) -> tuple[float, float, int]:
    """(p50 us, p99 us, lost) of client round trips through ``kind`` at ``rate``/s."""
    with _running(kind, server_cpu, reflect=True) as setup:
        results = CTX.Queue()
        pinger = CTX.Process(target=_pinger, args=(
            setup.server, ports, rate, samples, ENDPOINT_CPU, kind != "direct", results))
        pinger.start()
        rtts, lost = results.get(timeout=samples / rate + 60)
        pinger.join(10)
    return percentile(rtts, 50), percentile(rtts, 99), lost


def _rows_throughput(quick: bool) -> list[Row]:
    seconds = 2.0 if quick else 4.0
    best: dict[str, tuple[float, float]] = {}
    for _ in range(1 if quick else 3):  # interleaved rounds; best of each (least disturbed)
        for kind in ("direct", "asyncio", "relay"):
            rate, per_cpu = throughput(kind, ports=500, seconds=seconds)
            old = best.get(kind, (0.0, 0.0))
            best[kind] = (max(old[0], rate), max(old[1], per_cpu))
    wall, cpu = best["relay"], {k: v[1] for k, v in best.items()}
    return [
        Row("relay: forwarded pkt/s (wall clock)", wall[0], "pkt/s", baseline=best["direct"][0],
            ratio=wall[0] / best["direct"][0],
            note="500 ports + framed replies, 200 B; server cpu0, senders cpu1"),
        Row("relay: forwarded pkt per CPU-second", cpu["relay"], "pkt/s", baseline=cpu["direct"],
            ratio=cpu["relay"] / cpu["direct"], target=f">= {TARGET_PPS:,}",
            met=cpu["relay"] >= TARGET_PPS,
            note="baseline = direct: bare blocking recv/send reflector on the same core"),
        Row("relay: vs stdlib DatagramProtocol fwd", cpu["relay"], "pkt/s",
            baseline=cpu["asyncio"], ratio=cpu["relay"] / cpu["asyncio"],
            target=f">= {TARGET_VS_ASYNCIO:g}x",
            met=cpu["relay"] / cpu["asyncio"] >= TARGET_VS_ASYNCIO,
            note="same framing job, same sockets/buffers, per CPU-second"),
    ]


def _rows_latency(quick: bool) -> list[Row]:
    samples = 3000 if quick else 20000
    rate = 2000.0
    rows = []
    for label, cpu in (("shared core", ENDPOINT_CPU), ("own core", RELAY_CPU)):
        direct = latency("direct", ports=500, rate=rate, samples=samples, server_cpu=ENDPOINT_CPU)
        relay = latency("relay", ports=500, rate=rate, samples=samples, server_cpu=cpu)
        stdlib = latency("asyncio", ports=500, rate=rate, samples=samples, server_cpu=cpu)
        added = (relay[0] - direct[0]) / 2
        rows += [
            Row(f"relay: RTT p50 ({label})", relay[0], "us", baseline=direct[0],
                ratio=relay[0] / direct[0], note=f"{rate:g} pings/s over 500 ports; "
                f"stdlib fwd p50 {stdlib[0]:.0f} us; lost {relay[2]}"),
            Row(f"relay: RTT p99 ({label})", relay[1], "us", baseline=direct[1],
                ratio=relay[1] / direct[1], note=f"stdlib fwd p99 {stdlib[1]:.0f} us"),
            Row(f"relay: added per traversal p50 ({label})", added, "us",
                target=f"<= {TARGET_TRAVERSAL_US:g} us" if cpu == ENDPOINT_CPU else "",
                met=added <= TARGET_TRAVERSAL_US if cpu == ENDPOINT_CPU else None,
                note="(relay RTT p50 - direct RTT p50) / 2 traversals"),
        ]
    return rows


def run(quick: bool) -> list[Row]:
    return _rows_throughput(quick) + _rows_latency(quick)



