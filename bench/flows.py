"""Scale of the relay's state: bytes per flow and per-packet forwarding cost at 10k and 100k flows.

Flows are learned the way the relay learns them (``FlowTable.learn`` after ``validate_ufrag`` of
a minted ufrag). The forwarding cost is the relay's known-client path: ``FlowTable.get``, touch
``last_seen``, ``sendmsg([header, payload])`` to the transceiver (a socket nobody reads, so the
kernel drops at its queue), and separately the table part alone, on randomly ordered clients.
"""

from __future__ import annotations

import gc
import random
import socket
import time
import tracemalloc

from bench.common import RELAY_CPU, Row, pin, unpin
from fleet.addresses import Addr
from relays.flows import FlowTable
from relays.ufrag import mint_ufrag, validate_ufrag

KEYRING = {1: b"bench-secret"}
FLOW_BUDGET = 1024  # bytes per flow (issue #6)
FLAT_LIMIT = 1.25  # 100k/10k per-packet cost counted as "flat"


def clients(count: int, *, seed: int = 6) -> list[Addr]:
    """``count`` distinct client addresses spread over 10.0.0.0/8 with random ports."""
    rng = random.Random(seed)
    seen: set[Addr] = set()
    while len(seen) < count:
        ip = rng.getrandbits(24)
        seen.add((f"10.{ip >> 16}.{(ip >> 8) & 255}.{ip & 255}", rng.randrange(1024, 65536)))
    return list(seen)


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


def run(quick: bool) -> list[Row]:
    return measure((10_000, 100_000), probes=50_000 if quick else 300_000, rounds=1 if quick else 2)


def measure(sizes: tuple[int, int], *, probes: int, rounds: int) -> list[Row]:
    """Rows for a small and a large table (``run`` uses 10k and 100k)."""
    small, large = sizes
    pin(RELAY_CPU)
    try:
        memory = {n: bytes_per_flow(n, ("127.0.0.1", 9)) for n in sizes}
        wildcard = bytes_per_flow(large, ("127.0.0.1", 9), local=LOCAL)
        lookup: dict[int, float] = {}
        forward: dict[int, float] = {}
        for _ in range(rounds):  # interleaved: machine noise hits both sizes alike
            for n in sizes:
                lookup[n] = min(lookup.get(n, float("inf")), _cost(n, probes, send=False))
                forward[n] = min(forward.get(n, float("inf")), _cost(n, probes, send=True))
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
    rows.append(Row(f"flows: lookup+header @{_k(small)}", lookup[small], "ns/pkt",
                    note="FlowTable.get + last_seen + header, random clients"))
    rows.append(Row(f"flows: lookup+header @{_k(large)}", lookup[large], "ns/pkt",
                    baseline=lookup[small], ratio=lookup[large] / lookup[small],
                    target=f"flat (<= {FLAT_LIMIT}x of {_k(small)})",
                    met=lookup[large] / lookup[small] <= FLAT_LIMIT))
    rows.append(Row(f"flows: forward (get+sendmsg) @{_k(small)}", forward[small], "ns/pkt",
                    note="relay known-client path incl. sendmsg to loopback"))
    rows.append(Row(f"flows: forward (get+sendmsg) @{_k(large)}", forward[large], "ns/pkt",
                    baseline=forward[small], ratio=forward[large] / forward[small],
                    target=f"flat (<= {FLAT_LIMIT}x of {_k(small)})",
                    met=forward[large] / forward[small] <= FLAT_LIMIT))
    return rows


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)
