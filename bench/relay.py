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
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import redis
import uvloop
from aioice import stun

from bench.common import (
    BENCH_REDIS_URL,
    ENDPOINT_CPU,
    RELAY_CPU,
    Row,
    format_table,
    median,
    percentile,
    pin,
    write,
)
from bench.forwarders import (
    TURN_CHANNEL,
    blast,
    channel_data,
    coturn,
    coturn_version,
    start_cfwd,
    start_coturn,
    stop,
    turn_channel,
)
from fleet import addresses, keys
from fleet.addresses import Addr
from relays.framing import header_length, pack_header
from relays.stun import is_binding_request, parse_server_ufrag
from relays.ufrag import mint_ufrag, validate_ufrag

KEYRING = {1: b"bench-relay-secret"}
SHARD = 1
TRANSCEIVER_ID = 1
PAYLOAD = 200
TARGET_TRAVERSAL_US = 15.0
TARGET_VS_C = 0.9  # issue 15: the relay >= 0.9x a C recvmmsg/sendmmsg forwarder, >= coturn
PORTS = 256  # client flows
LABELS = {"relay": "relay (C fast path)", "relay-pure": "relay (pure Python)",
          "cfwd": "C recvmmsg fwd", "coturn": "coturn TURN", "asyncio": "stdlib DatagramProtocol",
          "direct": "bare Python reflector"}
CTX = mp.get_context("fork")



# servers under test ------------------------------------------------------------------------

def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay_server(public: int, internal: int, cpu: int, count: Any, ready: Any,
                  fast: bool = True, worker: int = 0) -> None:
    from relays.daemon import Relay, RelayConfig

    pin(cpu)
    config = RelayConfig(shard=SHARD, public=("127.0.0.1", public),
                         internal=("127.0.0.1", internal), redis_url=BENCH_REDIS_URL,
                         keyring=KEYRING, fastpath=fast, worker=worker,
                         max_queue_age=60.0)  # a starved core on a shared machine queues
    # datagrams for longer than the default 0.5 s: the bench measures forwarding, not that drop

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Relay(config) as relay:
            ready.set()
            if relay.fastpath != fast:
                raise RuntimeError("the relay fast path is not built (./dev builds it)")
            while not stop.is_set():
                counts = relay.counters()
                count.value = counts["forwarded_in"] + counts["forwarded_out"]
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


def _pinger(server: Addr, ports: int, rate: float, samples: int, cpu: int, learn: str,
            peer: Addr, results: Any) -> None:
    """Ping-pong one datagram at a time at ``rate``/s over ``ports`` clients; RTTs in us.
    ``learn``: "stun" (Binding with a minted ufrag), "turn" (an allocation and a channel to
    ``peer`` per client: pings go as channel data), or "none"."""
    pin(cpu)
    socks = _clients(ports, server, learn=learn == "stun")
    channels = [0] * len(socks)
    if learn == "turn":
        channels = [TURN_CHANNEL + n for n in range(len(socks))]
        for s, channel in zip(socks, channels, strict=True):
            turn_channel(s, peer, channel)
    for s in socks:
        s.settimeout(0.5)
    if learn == "stun":  # drain the echoed Binding requests; keep the ports whose flow was learned
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
        ping = body + sent.to_bytes(8, "big")
        s.send(channel_data(channels[n % ports], ping) if learn == "turn" else ping)
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

# The servers under test. relay: the real daemon on its C fast path; relay-pure: the same daemon
# with RELAY_FASTPATH off; cfwd: the C forwarder; coturn: TURN channel data; asyncio: the stdlib
# DatagramProtocol forwarder; direct: no server in between (the echo target is the server).
KINDS = ("relay", "relay-pure", "cfwd", "coturn", "asyncio", "direct")
LEARN = {"relay": "stun", "relay-pure": "stun", "asyncio": "stun", "cfwd": "stun",
         "coturn": "turn", "direct": "none"}


class _Setup:
    """One server under test (``KINDS``; ``workers`` relay processes) with its echo target."""

    def __init__(self, kind: str, server_cpu: int, *, reflect: bool, workers: int = 1) -> None:
        self.kind = kind
        self.count: Synchronized[float] = CTX.Value("d", 0.0)  # type: ignore[assignment]
        self.target_count: Synchronized[float] = CTX.Value("d", 0.0)  # type: ignore[assignment]
        self.xcvr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.xcvr.bind(("127.0.0.1", 0))
        self.xcvr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.target: Addr = self.xcvr.getsockname()
        self.public, self.internal = _free_udp(), _free_udp()
        self.procs: list[Any] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
        if kind.startswith("relay"):
            r = redis.Redis.from_url(BENCH_REDIS_URL)
            r.flushdb()
            r.hset(keys.TRANSCEIVERS_KEY, str(TRANSCEIVER_ID),
                   addresses.format_addr(self.target))
            for worker in range(workers):  # worker 1 (scaling row) runs on the other core
                ready = CTX.Event()
                self._start(CTX.Process(target=_relay_server, args=(
                    self.public, self.internal, server_cpu if worker == 0 else ENDPOINT_CPU,
                    self.count, ready, kind == "relay", worker)), ready)
        elif kind == "asyncio":
            ready = CTX.Event()
            self._start(CTX.Process(target=_asyncio_server, args=(
                self.public, self.internal, server_cpu, self.count, ready, self.target)), ready)
        elif kind == "cfwd":
            self._popen(start_cfwd(self.public, self.internal, self.target[1], server_cpu))
            time.sleep(0.2)
        elif kind == "coturn":
            self._popen(start_coturn(self.public, server_cpu, self.workdir))
        else:  # direct: the echo target is the server
            ready = CTX.Event()
            self._start(CTX.Process(target=_reflector, args=(
                self.xcvr, server_cpu, self.count, ready)), ready)
            self.public = self.target[1]
        if reflect and kind != "direct":
            ready = CTX.Event()
            proc = CTX.Process(target=_reflector, args=(
                self.xcvr, ENDPOINT_CPU, self.target_count, ready))
            proc.start()
            self.procs.append(proc)
            if not ready.wait(20):
                self.close()
                raise RuntimeError("echo target did not start")

    def _start(self, proc: Any, ready: Any) -> None:
        proc.start()
        self.procs.append(proc)
        self.pids.append(proc.pid)
        if not ready.wait(20):
            self.close()
            raise RuntimeError(f"{self.kind} server did not start")

    def _popen(self, proc: subprocess.Popen[bytes]) -> None:
        self.popens.append(proc)
        self.pids.append(proc.pid)

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
        for popen in self.popens:
            stop(popen)
        self.xcvr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.kind.startswith("relay"):
            redis.Redis.from_url(BENCH_REDIS_URL).flushdb()


@contextlib.contextmanager
def _running(kind: str, server_cpu: int, *, reflect: bool, workers: int = 1
             ) -> Iterator[_Setup]:
    setup = _Setup(kind, server_cpu, reflect=reflect, workers=workers)
    try:
        yield setup
    finally:
        setup.close()


def _drain(sock: socket.socket) -> None:
    """Discard what is queued (MSG_DONTWAIT: the socket may be shared with a blocking reader)."""
    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
        for _ in range(100_000):
            sock.recv(2048, socket.MSG_DONTWAIT)


def throughput(kind: str, *, ports: int, seconds: float, workers: int = 1,
               one_way: bool = False) -> tuple[float, float, float]:
    """(datagrams/s forwarded, per CPU-second of the server, its CPU utilisation) under the
    closed-loop C load generator (``bench.forwarders.blast``): ``ports`` client flows sending
    200-byte datagrams and (unless ``one_way``) the stand-in transceiver sending framed replies
    (TURN: raw datagrams to each allocation's relayed address)."""
    with _running(kind, RELAY_CPU, reflect=False, workers=workers) as setup:
        server = setup.target if kind == "direct" else setup.server
        socks = _clients(ports, server, learn=LEARN[kind] == "stun")
        try:
            relayed: list[Addr] = []
            if kind == "coturn":
                relayed = [turn_channel(s, setup.target, TURN_CHANNEL + n)
                           for n, s in enumerate(socks)]
            time.sleep(0.3)  # flows learned (and written) before the load
            for sock in (*socks, setup.xcvr):
                _drain(sock)
            payload = b"\x80" + bytes(PAYLOAD - 1)  # an RTP-looking first byte (RFC 7983)
            internal = ("127.0.0.1", setup.internal)
            lines: list[tuple[socket.socket, Addr | None, bytes]] = []
            for n, s in enumerate(socks):
                if kind == "coturn":
                    lines.append((s, None, channel_data(TURN_CHANNEL + n, payload)))
                    back: tuple[Addr, bytes] | None = (relayed[n], payload)
                else:
                    lines.append((s, None, payload))
                    back = (internal, pack_header(s.getsockname()) + payload)
                if kind != "direct" and not one_way and back is not None:
                    lines.append((setup.xcvr, back[0], back[1]))
            return blast(lines, setup.pids, seconds=seconds, warmup=1.0, cpu=ENDPOINT_CPU,
                         sinks=() if kind == "direct" else (setup.xcvr,))
        finally:
            for sock in socks:
                sock.close()


def latency(kind: str, *, ports: int, rate: float, samples: int, server_cpu: int
            ) -> tuple[float, float, int]:
    """(p50 us, p99 us, lost) of client round trips through ``kind`` at ``rate``/s."""
    with _running(kind, server_cpu, reflect=True) as setup:
        results = CTX.Queue()
        pinger = CTX.Process(target=_pinger, args=(
            setup.server, ports, rate, samples, ENDPOINT_CPU, LEARN[kind], setup.target,
            results))
        pinger.start()
        rtts, lost = results.get(timeout=samples * 0.01 + 60)  # RTTs of ms on a busy machine
        pinger.join(10)
    return percentile(rtts, 50), percentile(rtts, 99), lost


def _available(kind: str) -> bool:
    if kind == "coturn":
        return coturn() is not None
    if kind == "relay":
        from relays import fastpath

        return fastpath.available()
    return True


def _rows_throughput(quick: bool) -> tuple[list[Row], dict[str, float]]:
    """Interleaved rounds (every kind once per round, same core plan); per kind the median
    round, and the relay's ratios to the baselines paired within each round."""
    seconds, rounds = (2.0, 1) if quick else (4.0, 3)
    kinds = [k for k in KINDS if _available(k)]
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            runs[kind].append(throughput(kind, ports=PORTS, seconds=seconds))
    per_cpu = {k: median([r[1] for r in v]) for k, v in runs.items()}
    util = {k: median([r[2] for r in v]) for k, v in runs.items()}

    def paired(kind: str, base: str) -> float:
        return median([a[1] / b[1] for a, b in zip(runs[kind], runs[base], strict=True)])

    rows = []
    for kind in kinds:
        ratio_c = per_cpu[kind] / per_cpu["cfwd"]
        target, met = "", None
        if kind == "relay" or (kind == "relay-pure" and "relay" not in kinds):
            target = f">= {TARGET_VS_C:g}x C fwd"
            met = ratio_c >= TARGET_VS_C
        rows.append(Row(f"relay bench: {LABELS[kind]}: pkt per CPU-second", per_cpu[kind],
                        "pkt/s", baseline=per_cpu["cfwd"], ratio=ratio_c, target=target, met=met,
                        note=f"paired ratio {paired(kind, 'cfwd'):.2f}; server CPU "
                             f"{util[kind]:.0%} busy; "
                             f"{median([r[0] for r in runs[kind]]):,.0f} pkt/s wall"))
    best = "relay" if "relay" in kinds else "relay-pure"
    if "coturn" in kinds:
        ratio = per_cpu[best] / per_cpu["coturn"]
        rows.append(Row(f"relay bench: {LABELS[best]} vs coturn", per_cpu[best], "pkt/s",
                        baseline=per_cpu["coturn"], ratio=ratio, target=">= 1x coturn",
                        met=ratio >= 1.0,
                        note=f"paired ratio {paired(best, 'coturn'):.2f}; coturn "
                             f"{coturn_version()}, TURN channel data, 1 relay thread"))
    else:
        rows.append(Row("relay bench: vs coturn: skipped", 0.0, "-",
                        note="turnserver not installed (apt-get install coturn)"))
    return rows, per_cpu


def _rows_scaling(quick: bool) -> list[Row]:
    """Relay packets/s (wall clock, one-way) with 1 and 2 SO_REUSEPORT workers."""
    seconds = 2.0 if quick else 4.0
    one = throughput("relay", ports=PORTS, seconds=seconds, one_way=True)
    two = throughput("relay", ports=PORTS, seconds=seconds, one_way=True, workers=2)
    return [
        Row("relay bench: 1 worker, pkt/s (one-way)", one[0], "pkt/s",
            note=f"worker cpu0 ({one[2]:.0%} busy), load generator cpu1"),
        Row("relay bench: 2 SO_REUSEPORT workers, pkt/s", two[0], "pkt/s", baseline=one[0],
            ratio=two[0] / one[0],
            note=f"workers cpu0 + cpu1 ({two[2]:.0%} of one core), load generator shares "
                 "cpu1: 2 cores are the machine's limit"),
    ]


def _rows_latency(quick: bool) -> list[Row]:
    """Ping-pong through each kind in interleaved rounds; the median round's p50 and p99."""
    samples, rounds = (1000, 1) if quick else (2000, 3)
    rate = 2000.0
    kinds = [k for k in KINDS if _available(k)]
    runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:  # the server on its own core, pinger and echo target on the other
            cpu = ENDPOINT_CPU if kind == "direct" else RELAY_CPU  # direct: no server between
            runs[kind].append(latency(kind, ports=PORTS, rate=rate, samples=samples,
                                      server_cpu=cpu))
    direct50 = median([r[0] for r in runs["direct"]])
    direct99 = median([r[1] for r in runs["direct"]])
    rows = []
    for kind in kinds:
        if kind == "direct":
            continue
        p50, p99 = median([r[0] for r in runs[kind]]), median([r[1] for r in runs[kind]])
        added50, added99 = (p50 - direct50) / 2, (p99 - direct99) / 2
        target, met = "", None
        if kind == "relay":
            target, met = f"<= {TARGET_TRAVERSAL_US:g} us", added50 <= TARGET_TRAVERSAL_US
        rows.append(Row(f"relay bench: {LABELS[kind]}: added per traversal p50", added50, "us",
                        target=target, met=met,
                        note=f"p99 {added99:.0f} us; RTT p50/p99 {p50:.0f}/{p99:.0f} us vs "
                             f"direct {direct50:.0f}/{direct99:.0f}; per-round p50 "
                             f"{'/'.join(f'{r[0]:.0f}' for r in runs[kind])} us; lost "
                             f"{sum(r[2] for r in runs[kind])}"))
    return rows


def run(quick: bool) -> list[Row]:
    rows, _ = _rows_throughput(quick)
    write(format_table(rows))  # printed as it comes: the later parts take minutes
    scaling = _rows_scaling(quick)
    write(format_table(scaling))
    return rows + scaling + _rows_latency(quick)
