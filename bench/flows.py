"""Scale of the relay's state: bytes per flow and per-packet forwarding cost at 10k and 100k flows.

Flows are learned the way the relay learns them (``FlowTable.learn`` after ``validate_ufrag`` of
a minted ufrag). Two forwarding costs, on randomly ordered clients:

- the relay's known-client path as it runs: the C fast path (``relays/_fastpath.c``:
  ``recvmmsg``, its flow table, ``sendmmsg``) with the flows learned into it, fed datagrams
  from every one of those clients in turn (127.0.0.0/8 sources written by a raw socket in a
  process on the other core, paced to stay inside the socket's queue: root only) and timed by
  the draining thread's CPU per packet forwarded; it carries the "flat" targets where it can
  run;
- the pure-Python fallback: ``FlowTable.get``, touch ``last_seen``,
  ``sendmsg([header, payload])`` to the transceiver (a socket nobody reads, so the kernel drops
  at its queue), and the table part alone.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import random
import select
import socket
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

from bench.common import ENDPOINT_CPU, RELAY_CPU, Row, pin, udp_datagram, unpin
from fleet.addresses import Addr
from fleet.sockets import enable_drop_counts
from relays import fastpath
from relays.flows import FlowTable
from relays.framing import pack_header
from relays.ufrag import mint_ufrag, validate_ufrag

KEYRING = {1: b"bench-secret"}
FLOW_BUDGET = 1024  # bytes per flow (issue #6)
FLAT_LIMIT = 1.25  # 100k/10k per-packet cost counted as "flat"


def clients(count: int, *, seed: int = 6, network: int = 10) -> list[Addr]:
    """``count`` distinct client addresses spread over ``network``.0.0.0/8 (10: private; 127:
    loopback, every one of them this host) with random ports, no host part ending in 0 or 255."""
    rng = random.Random(seed)
    seen: set[Addr] = set()
    while len(seen) < count:
        ip = rng.getrandbits(24)
        if ip & 255 not in (0, 255):
            seen.add((f"{network}.{ip >> 16}.{(ip >> 8) & 255}.{ip & 255}",
                      rng.randrange(1024, 65536)))
    return list(seen)


PAYLOAD = 200  # bytes per datagram, as in the relay bench
LOCAL = bytes([192, 0, 2, 1])  # the relay address the clients send to (one object: interned)


def build(addrs: list[Addr], transceiver: Addr, *, local: bytes | None = None) -> FlowTable:
    """A table of ``addrs``, each learned from a validly minted ufrag (as from a Binding req);
    ``local``: as on a relay bound to a wildcard address (IP_PKTINFO)."""
    table = FlowTable(max_flows=len(addrs) + 1)
    rng = random.Random(7)
    for n, client in enumerate(addrs):
        ufrag = mint_ufrag(shard=1, transceiver=1 + n % 8, key_id=1, key=KEYRING[1],
                           nonce=rng.randbytes(4))
        claims = validate_ufrag(ufrag, keys=KEYRING)
        table.learn(client, transceiver_id=claims.transceiver, transceiver=transceiver, now=0.0,
                    local=local)
    return table


def bytes_per_flow(count: int, transceiver: Addr, *, local: bytes | None = None) -> float:
    """tracemalloc bytes held by a table of ``count`` flows, including the address keys."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    addrs = clients(count)
    table = build(addrs, transceiver, local=local)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del table, addrs
    return held / count


def forward_ns(table: FlowTable, probes: list[Addr], sink: socket.socket, sink_addr: Addr,
               *, send: bool) -> float:
    """Mean ns per packet of the relay's known-client path over ``probes``."""
    payload = memoryview(bytes(200))
    get, sendmsg = table.get, sink.sendmsg
    dropped = 0
    start = time.perf_counter_ns()
    for client in probes:
        flow = get(client)
        if flow is None:
            continue
        flow.last_seen = 1.0
        if send:
            try:
                sendmsg([flow.header, payload], [], 0, sink_addr)
            except BlockingIOError:
                dropped += 1
        else:
            _ = (flow.header, payload, flow.transceiver)
    return (time.perf_counter_ns() - start) / len(probes)


def _cost(count: int, probes: int, *, send: bool) -> float:
    """Best of three passes of ``probes`` random known clients over a ``count``-flow table."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    try:
        addr: Addr = sink.getsockname()
        table_addrs = clients(count)
        table = build(table_addrs, addr)
        rng = random.Random(8)
        # fresh str objects, as recvfrom returns: the hash is computed per packet, as in the relay
        sample = [(str(ip.encode().decode()), port)
                  for ip, port in (rng.choice(table_addrs) for _ in range(probes))]
        forward_ns(table, sample[: probes // 10], out, addr, send=send)  # warm up
        runs = [forward_ns(table, sample, out, addr, send=send) for _ in range(3)]
        return min(runs)
    finally:
        sink.close()
        out.close()


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # socket(7); Python 3.11 lacks it
IN_FLIGHT = 1024  # forged datagrams ahead of the drainer at most (~1 MB of the 8 MB queue)


def _send_forged(addrs: list[Addr], port: int, total: int, cpu: int, drained: Any) -> None:
    """Send ``total`` forged datagrams from every client of ``addrs`` in turn (one shuffled
    order, repeated), never more than ``IN_FLIGHT`` ahead of ``drained`` (the drainer's count of
    forwarded datagrams); after 50 ms without progress what is missing counts as dropped."""
    pin(cpu)
    order = list(addrs)
    random.Random(9).shuffle(order)
    payload = b"\x80" + bytes(PAYLOAD - 1)
    datagrams = [udp_datagram(client, ("127.0.0.1", port), payload) for client in order]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for n in range(total):
            if n - drained.value >= IN_FLIGHT:
                wait_until = time.monotonic() + 0.05
                while n - drained.value >= IN_FLIGHT and time.monotonic() < wait_until:
                    time.sleep(0.0001)
            raw.sendto(datagrams[n % len(datagrams)], ("127.0.0.1", 0))


def can_forge() -> bool:
    """Raw sockets (CAP_NET_RAW) and the C fast path: what ``fast_forward_ns`` needs."""
    if not fastpath.available():
        return False
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
    except OSError:  # no CAP_NET_RAW, or a sandbox refusing raw sockets
        return False
    return True


@dataclass(frozen=True)
class FastRun:
    ns_per_packet: float  # the draining thread's CPU per datagram forwarded
    forwarded: int
    dropped: int  # at the public socket's full queue (SO_RXQ_OVFL)


def fast_forward_ns(count: int, packets: int) -> FastRun:
    """The relay's C fast path holding ``count`` flows, fed ``packets`` datagrams from all of
    those clients in random order (see the module's docstring)."""
    assert fastpath.FastPath is not None
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    public, internal, transceiver = sockets
    sender = None
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        # forced past net.core.rmem_max (212992 on a stock Debian): root is needed anyway
        public.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        enable_drop_counts(public)
        fast = fastpath.FastPath(public.fileno(), internal.fileno(), 0.0)
        addrs = clients(count, network=127)
        for client in addrs:
            fast.learn(pack_header(client), client, transceiver.getsockname(), False, None)
        ctx = mp.get_context("fork")
        drained = ctx.RawValue("q", 0)
        sender = ctx.Process(target=_send_forged, args=(
            addrs, public.getsockname()[1], packets, ENDPOINT_CPU, drained))
        before = fast.counters()["forwarded_in"]
        sender.start()
        cpu = time.thread_time()  # after the fork: its page-table copy grows with the table
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the sender is done and its queue drained
            if select.select([public], [], [], 0.2)[0]:
                fast.drain_public(time.time())
                drained.value = fast.counters()["forwarded_in"] - before
            elif not sender.is_alive():
                break
        cpu = time.thread_time() - cpu
        counters = fast.counters()
        forwarded = counters["forwarded_in"] - before
        if forwarded < packets // 2 or sender.is_alive() or sender.exitcode:
            raise RuntimeError(f"the fast path forwarded {forwarded} of {packets} datagrams "
                               f"(sender exit code {sender.exitcode})")
        return FastRun(cpu * 1e9 / forwarded, forwarded, counters["drop_rxq_overflow"])
    finally:
        if sender is not None and sender.is_alive():
            sender.terminate()
        if sender is not None and sender.pid is not None:
            sender.join(5)
        for sock in sockets:
            sock.close()


def run(quick: bool) -> list[Row]:
    return measure((10_000, 100_000), probes=50_000 if quick else 300_000, rounds=1 if quick else 2,
                   packets=100_000 if quick else 400_000)


def measure(sizes: tuple[int, int], *, probes: int, rounds: int, packets: int = 0
            ) -> list[Row]:
    """Rows for a small and a large table (``run`` uses 10k and 100k); the C fast path's rows
    with ``packets`` datagrams a run where ``can_forge``."""
    small, large = sizes
    fast = packets > 0 and can_forge()
    pin(RELAY_CPU)
    try:
        memory = {n: bytes_per_flow(n, ("127.0.0.1", 9)) for n in sizes}
        wildcard = bytes_per_flow(large, ("127.0.0.1", 9), local=LOCAL)
        lookup: dict[int, float] = {}
        forward: dict[int, float] = {}
        native: dict[int, FastRun] = {}
        for _ in range(rounds):  # interleaved: machine noise hits both sizes alike
            for n in sizes:
                lookup[n] = min(lookup.get(n, float("inf")), _cost(n, probes, send=False))
                forward[n] = min(forward.get(n, float("inf")), _cost(n, probes, send=True))
                if fast:
                    run = fast_forward_ns(n, packets)
                    if n not in native or run.ns_per_packet < native[n].ns_per_packet:
                        native[n] = run
    finally:
        unpin()
    rows = [
        Row(f"flows: memory per flow @{_k(n)}", memory[n], "B/flow",
            target=f"<= {FLOW_BUDGET} B", met=memory[n] <= FLOW_BUDGET,
            note="tracemalloc: Flow + header + both dict slots + address key")
        for n in sizes
    ]
    rows.append(Row(f"flows: memory per flow, wildcard-bound @{_k(large)}", wildcard, "B/flow",
                    baseline=memory[large], ratio=wildcard / memory[large],
                    target=f"<= {FLOW_BUDGET} B", met=wildcard <= FLOW_BUDGET,
                    note="each flow also holds its local address (IP_PKTINFO; one shared object)"))
    flat = f"flat (<= {FLAT_LIMIT}x of {_k(small)})"
    if fast:
        c_small, c_large = native[small].ns_per_packet, native[large].ns_per_packet
        rows.append(Row(f"flows: relay fast path forward @{_k(small)}", c_small, "ns/pkt",
                        note=f"C: recvmmsg + flow table + sendmmsg, CPU per packet forwarded; "
                             f"{packets:,} datagrams from every one of the flows' clients"))
        rows.append(Row(f"flows: relay fast path forward @{_k(large)}", c_large, "ns/pkt",
                        baseline=c_small, ratio=c_large / c_small, target=flat,
                        met=c_large / c_small <= FLAT_LIMIT,
                        note=f"the path the relay forwards known flows on; forwarded "
                             f"{native[large].forwarded:,}, dropped at a full queue "
                             f"{native[large].dropped:,}"))
    python = ("pure-Python fallback" if fast
              else "the relay's path here (no C fast path or no raw socket)")
    rows.append(Row(f"flows: lookup+header @{_k(small)}", lookup[small], "ns/pkt",
                    note=f"FlowTable.get + last_seen + header, random clients; {python}"))
    rows.append(Row(f"flows: lookup+header @{_k(large)}", lookup[large], "ns/pkt",
                    baseline=lookup[small], ratio=lookup[large] / lookup[small],
                    target="" if fast else flat,
                    met=None if fast else lookup[large] / lookup[small] <= FLAT_LIMIT))
    rows.append(Row(f"flows: forward (get+sendmsg) @{_k(small)}", forward[small], "ns/pkt",
                    note=f"known-client path incl. sendmsg to loopback; {python}"))
    rows.append(Row(f"flows: forward (get+sendmsg) @{_k(large)}", forward[large], "ns/pkt",
                    baseline=forward[small], ratio=forward[large] / forward[small],
                    target="" if fast else flat,
                    met=None if fast else forward[large] / forward[small] <= FLAT_LIMIT))
    return rows


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)
