"""Nodes bound to the wildcard address advertise another one (pods, VMs behind NAT or an LB):
answers carry the relay's ``--advertise``, relays frame to the transceiver's ``--advertise``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from copy import deepcopy
from typing import cast

import pytest
import redis

from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from fleet.keys import TRANSCEIVERS_KEY, relay_heartbeat_key, transceiver_heartbeat_key
from tests.e2e.conftest import (
    LOCAL,
    ROOT,
    Edge,
    free_port,
    placed_call,
    start_edge,
    stop_edge,
)
from whip.client import Call

pytestmark = [pytest.mark.e2e]

# Bound nowhere, yet it reaches a 0.0.0.0-bound socket (all of 127/8 is loopback), so health
# probes pass and the relay stays allocatable; an address nothing answers on (TEST-NET) would
# have the probes mark the relay down within 2 s and race the offer.
ADVERTISED = "127.0.0.2"
# no nodes from ``up``: each test starts its own
ADVERTISED_REGIONS = ("adva", "advb", "advc", "advd", "adve")


@pytest.fixture(scope="module")
def bare_edge(tmp_path_factory: pytest.TempPathFactory, redis_dbs: object) -> Iterator[Edge]:
    """``up`` with the usual local region, plus two regions (pinned with ``?region=``) whose
    nodes the tests start themselves, bound to 0.0.0.0."""
    assert callable(redis_dbs)
    running = start_edge(tmp_path_factory.mktemp("advertise"), redis_dbs(), deepcopy(LOCAL))
    create = "; ".join(
        f"region_upsert(code={code!r}, name={code!r}, latitude=10.0, longitude=10.0)"
        for code in ADVERTISED_REGIONS
    )
    manage = str(ROOT / "manage.py")
    try:  # a failed set-up must not leave the edge running (it would share later tests' Redis)
        subprocess.run([sys.executable, manage, "shell", "-c",
                        f"from geo.services import region_upsert; {create}"],
                       env=_env(running), check=True, timeout=60)
        yield running
    finally:
        stop_edge(running)


def _env(edge: Edge) -> dict[str, str]:
    return edge.manage_env()


@contextlib.contextmanager
def _node(edge: Edge, *argv: str, env: dict[str, str] | None = None
          ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *argv],
                            env={**_env(edge), **(env or {})})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_key(client: redis.Redis, key: str, proc: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 30
    while (raw := client.get(key)) is None:
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}"
        assert time.monotonic() < deadline, f"no {key}"
        time.sleep(0.1)
    return bytes(raw)


def _relay(
    edge: Edge, shard: int, region: str, public: str, *, fastpath: bool = True
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``public``: the bound public host, or ``HOST,ADVERTISED`` (the internal side is bound to
    0.0.0.0 and advertised as 127.0.0.1 either way)."""
    bound, _, advertised = public.partition(",")
    port, internal = free_port(), free_port()
    advertise = ["--advertise", f"{advertised}:{port}"] if advertised else []
    return _node(edge, "run_relay", "--shard", str(shard), "--region", region,
                 "--public", f"{bound}:{port}", *advertise, "--internal", f"0.0.0.0:{internal}",
                 "--internal-advertise", f"127.0.0.1:{internal}",
                 env={"RELAY_FASTPATH": "1" if fastpath else "0"})


def _transceiver(
    edge: Edge, xid: int, region: str, port: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return _node(edge, "run_transceiver", "--id", str(xid), "--region", region,
                 "--bind", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}")


async def _placed_call(edge: Edge, region: str, seconds: float) -> Call:
    """A started call in ``region``; 503s are retried for 15 s, since a node probed between its
    registration and its first heartbeat stays suspect until the next probe (2 s)."""
    return await placed_call(edge, seconds=seconds, region=region, wait=15)


def _candidate_addresses(sdp: str) -> list[tuple[str, int]]:
    fields = [line.split() for line in sdp.splitlines() if line.startswith("a=candidate:")]
    return [(f[4], int(f[5])) for f in fields]


async def test_answer_carries_the_advertised_relay_address(bare_edge: Edge) -> None:
    client = redis.Redis.from_url(bare_edge.redis_url)
    port = free_port()
    with _relay(bare_edge, 21, "advb", f"0.0.0.0,{ADVERTISED}") as relay, \
            _transceiver(bare_edge, 21, "advb", port) as xcvr:
        beat = RelayHeartbeat.from_json(_wait_key(client, relay_heartbeat_key(21, 0), relay))
        _wait_key(client, transceiver_heartbeat_key(21), xcvr)
        assert beat.public.startswith(f"{ADVERTISED}:")
        call = await _placed_call(bare_edge, "advb", 0.5)
        try:
            advertised = (ADVERTISED, int(beat.public.split(":")[1]))
            assert _candidate_addresses(call.answer) == [advertised]
        finally:
            await call.stop()


async def test_call_through_wildcard_bound_relay_and_transceiver(bare_edge: Edge) -> None:
    """A real aiortc call: relay frames to the transceiver's advertised 127.0.0.1 from its
    0.0.0.0-bound internal socket; the 0.0.0.0-bound transceiver answers from 127.0.0.1.

    The relay's public side stays bound to 127.0.0.1 here (the next test binds it to 0.0.0.0)."""
    client = redis.Redis.from_url(bare_edge.redis_url)
    port = free_port()
    with _relay(bare_edge, 22, "adva", "127.0.0.1") as relay, \
            _transceiver(bare_edge, 22, "adva", port) as xcvr:
        relay_beat = RelayHeartbeat.from_json(
            _wait_key(client, relay_heartbeat_key(22, 0), relay)
        )
        beat = TransceiverHeartbeat.from_json(
            _wait_key(client, transceiver_heartbeat_key(22), xcvr)
        )
        assert beat.bind == f"127.0.0.1:{port}"
        assert client.hget(TRANSCEIVERS_KEY, "22") == f"127.0.0.1:{port}".encode()
        assert relay_beat.internal.startswith("127.0.0.1:")
        call = await _placed_call(bare_edge, "adva", 3.0)
        try:
            assert call.response_headers["X-Transceiver"] == "22"
            relay_public = ("127.0.0.1", int(relay_beat.public.split(":")[1]))
            assert _candidate_addresses(call.answer) == [relay_public]
            await call.wait_connected()
            await call.play()
            ratio = call.echo_ratio()
            assert call.track.tone_sent >= 100
            assert ratio >= 0.9, f"only {ratio:.1%} of {call.track.tone_sent} tone frames came back"
        finally:
            await call.stop()


@pytest.mark.parametrize(("fastpath", "shard", "region"),
                         [(True, 24, "advd"), (False, 25, "adve")], ids=["fastpath", "pure"])
async def test_call_through_relay_bound_to_0000_on_its_non_primary_address(
    bare_edge: Edge, fastpath: bool, shard: int, region: str
) -> None:
    """A real aiortc call through a relay bound to 0.0.0.0 and advertised as 127.0.0.1 echoes,
    on both relay paths: this host's client gathers only its eth0 address, so every reply leaves
    with IP_PKTINFO naming 127.0.0.1 (the kernel's own choice would be the eth0 address). aioice
    does not check the source of what it receives, so this call would connect without IP_PKTINFO
    too: the source address itself is asserted in tests/relays/test_pktinfo.py."""
    client = redis.Redis.from_url(bare_edge.redis_url)
    port = free_port()
    with _relay(bare_edge, shard, region, "0.0.0.0,127.0.0.1", fastpath=fastpath) as relay, \
            _transceiver(bare_edge, shard, region, port) as xcvr:
        relay_beat = RelayHeartbeat.from_json(
            _wait_key(client, relay_heartbeat_key(shard, 0), relay)
        )
        _wait_key(client, transceiver_heartbeat_key(shard), xcvr)
        call = await _placed_call(bare_edge, region, 3.0)
        try:
            relay_public = ("127.0.0.1", int(relay_beat.public.split(":")[1]))
            assert _candidate_addresses(call.answer) == [relay_public]
            await call.wait_connected()
            await call.play()
            ratio = call.echo_ratio()
            assert call.track.tone_sent >= 100
            assert ratio >= 0.9, f"only {ratio:.1%} of {call.track.tone_sent} tone frames came back"
        finally:
            await call.stop()


class UserspaceNat(asyncio.DatagramProtocol):
    """A NAT in front of the relay: callers send to its public port; it forwards each one's
    datagrams from an outside socket of its own (the mapping), and ``rebind()`` forgets every
    mapping, so the relay sees the same caller from a new source port (a NAT rebinding)."""

    def __init__(self, relay: tuple[str, int]) -> None:
        self.relay = relay
        self.public: asyncio.DatagramTransport | None = None
        self.mappings: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.public = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        outside = self.mappings.get(addr)
        if outside is None:
            asyncio.ensure_future(self._map(addr, data))
        else:
            outside.sendto(data, self.relay)

    async def _map(self, caller: tuple[str, int], first: bytes) -> None:
        nat = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if nat.public is not None:
                    nat.public.sendto(data, caller)

        if caller not in self.mappings:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Outside, local_addr=("127.0.0.1", 0))
            self.mappings[caller] = transport  # type: ignore[assignment]
        self.mappings[caller].sendto(first, self.relay)

    def rebind(self) -> int:
        forgotten = len(self.mappings)
        for transport in self.mappings.values():
            transport.close()
        self.mappings.clear()
        return forgotten

    def close(self) -> None:
        self.rebind()
        if self.public is not None:
            self.public.close()


REBIND_WITHIN = 7.0  # s: the caller's next consent check (aiortc: every 4-6 s) plus a round trip


async def test_nat_rebinding_mid_call_follows_the_caller(bare_edge: Edge) -> None:
    """The caller's NAT forgets its mapping mid-call and sends from a new port: the relay learns
    the new address from the next consent check, the transceiver proves it with a check of its
    own and moves the session there, and the echo comes back without a new offer."""
    from tests.e2e.test_fleet import echo_recovered_at

    client = redis.Redis.from_url(bare_edge.redis_url)
    relay_port, internal, port = free_port(), free_port(), free_port()
    loop = asyncio.get_running_loop()
    _, nat = await loop.create_datagram_endpoint(
        lambda: UserspaceNat(("127.0.0.1", relay_port)), local_addr=("127.0.0.1", 0))
    assert nat.public is not None
    nat_port = nat.public.get_extra_info("sockname")[1]
    try:
        with _node(bare_edge, "run_relay", "--shard", "23", "--region", "advc",
                   "--public", f"127.0.0.1:{relay_port}", "--advertise", f"127.0.0.1:{nat_port}",
                   "--internal", f"127.0.0.1:{internal}") as relay, \
                _transceiver(bare_edge, 23, "advc", port) as xcvr:
            _wait_key(client, relay_heartbeat_key(23, 0), relay)
            _wait_key(client, transceiver_heartbeat_key(23), xcvr)
            call = await _placed_call(bare_edge, "advc", 25.0)
            try:
                await call.wait_connected()
                await asyncio.sleep(1.5)
                assert len(call.received.rtp_times) > 30  # echo flowing through the NAT
                rebound = time.monotonic()
                assert nat.rebind() >= 1
                await asyncio.sleep(REBIND_WITHIN + 1.0)
                arrivals = list(call.received.rtp_times)
                took = echo_recovered_at(arrivals, rebound) - rebound
                assert arrivals[-1] > rebound and took <= REBIND_WITHIN, (took, arrivals[-3:])
                assert time.monotonic() - arrivals[-1] < 0.5  # and it keeps flowing
                assert call.pc.connectionState == "connected"
            finally:
                await call.stop()
    finally:
        nat.close()
