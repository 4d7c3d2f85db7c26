"""Loopback smoke tests of the relay shell: real UDP sockets, real Redis, port 0. Every routing
decision is tested on the core (test_demux.py); these prove the shell carries them out, on both
paths: the C fast path (``relays/_fastpath.c``) and the pure-Python one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from urllib.parse import urlparse

import pytest
import redis

from fleet import addresses, heartbeats, keys
from fleet.addresses import Addr
from relays import fastpath
from relays.actions import DropReason
from relays.daemon import Relay, RelayConfig, serve
from relays.framing import pack_header, parse_header
from tests.relays.conftest import DTLS, KEYS, SHARD, XCVR, binding_request

PATH = {"fastpath": True}  # set per test by the ``relay_path`` fixture


@pytest.fixture(autouse=True, params=[
    pytest.param(True, id="fastpath", marks=pytest.mark.skipif(
        not fastpath.available(), reason="C fast path not built (./dev builds it)")),
    pytest.param(False, id="pure"),
])
def relay_path(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Every test here runs on both relay paths."""
    PATH["fastpath"] = request.param
    yield request.param
    PATH["fastpath"] = True


def make_config(redis_url: str, **overrides: object) -> RelayConfig:
    config = RelayConfig(
        shard=SHARD, public=("127.0.0.1", 0), internal=("127.0.0.1", 0), redis_url=redis_url,
        keyring=KEYS, heartbeat_interval=0.05, registry_interval=0.05, flow_write_interval=0.01,
        redis_timeout=0.5, fastpath=PATH["fastpath"],
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def addr_of(sock: socket.socket) -> Addr:
    name = sock.getsockname()
    return name[0], name[1]


async def recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, Addr]:
    data, source = await asyncio.wait_for(
        asyncio.get_running_loop().sock_recvfrom(sock, 65535), timeout
    )
    return data, (source[0], source[1])


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def client() -> Iterator[socket.socket]:
    with contextlib.closing(udp()) as sock:
        yield sock


@pytest.fixture
def transceiver(redis_client: redis.Redis) -> Iterator[socket.socket]:
    """A stand-in transceiver endpoint, registered in ``edge:transceivers`` (the contract)."""
    with contextlib.closing(udp()) as sock:
        redis_client.hset(keys.TRANSCEIVERS_KEY, str(XCVR), addresses.format_addr(addr_of(sock)))
        yield sock


@pytest.fixture
async def relay(redis_url: str, transceiver: socket.socket) -> AsyncIterator[Relay]:
    async with Relay(make_config(redis_url)) as running:
        yield running


async def establish(relay: Relay, client: socket.socket, transceiver: socket.socket) -> None:
    """Learn the client's flow with a Binding request and check it arrives framed."""
    assert relay.fastpath is relay.config.fastpath  # the path under test is the one running
    request = binding_request()
    client.sendto(request, relay.public_addr)
    frame, source = await recv(transceiver)
    assert source == relay.internal_addr
    assert parse_header(frame) == (addr_of(client), 8)
    assert frame[8:] == request


async def test_binding_learns_flow_and_both_directions_work(
    relay: Relay, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    await establish(relay, client, transceiver)
    transceiver.sendto(pack_header(addr_of(client)) + b"reply", relay.internal_addr)
    assert await recv(client) == (b"reply", relay.public_addr)
    client.sendto(DTLS, relay.public_addr)
    assert await recv(transceiver) == (pack_header(addr_of(client)) + DTLS, relay.internal_addr)

    key = keys.flow_key(SHARD, addr_of(client))
    await eventually(lambda: redis_client.get(key) == str(XCVR).encode())
    assert 0 < redis_client.ttl(key) <= keys.FLOW_TTL
    counters = relay.counters()
    assert (counters["learned_stun"], counters["forwarded_in"], counters["forwarded_out"]) == (
        1, 2, 1
    )
    assert not relay.core.drops


async def test_drain_request_waits_for_quiet_flows_then_sets_drained(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, drain_idle=0.3)) as relay:
        await establish(relay, client, transceiver)
        redis_client.set(keys.drain_key("relay", SHARD), "test")
        key = keys.relay_heartbeat_key(SHARD, 0)
        await eventually(lambda: relay.draining and redis_client.exists(key) == 1)
        await eventually(lambda: heartbeats.RelayHeartbeat.from_json(
            redis_client.get(key) or b"{}").draining)  # the heartbeat tells the fleet
        await eventually(lambda: relay.drained.is_set(), timeout=5.0)
        assert relay.draining


async def test_flow_written_by_one_relay_is_used_by_a_fresh_one(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url)) as first:
        await establish(first, client, transceiver)
        key = keys.flow_key(SHARD, addr_of(client))
        await eventually(lambda: redis_client.exists(key) == 1)
    async with Relay(make_config(redis_url)) as second:
        for _ in range(3):  # held while the lookup is in flight, then forwarded in order
            client.sendto(DTLS, second.public_addr)
        for _ in range(3):
            frame, source = await recv(transceiver)
            assert (frame, source) == (pack_header(addr_of(client)) + DTLS, second.internal_addr)
        assert second.core.learned_redis == 1 and second.core.learned_stun == 0


async def test_active_flows_are_rewritten_to_redis(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, flow_refresh_interval=0.05)) as relay:
        await establish(relay, client, transceiver)
        key = keys.flow_key(SHARD, addr_of(client))
        await eventually(lambda: redis_client.exists(key) == 1)
        redis_client.delete(key)  # e.g. Redis restarted without persistence
        client.sendto(DTLS, relay.public_addr)
        await recv(transceiver)
        await eventually(lambda: redis_client.get(key) == str(XCVR).encode())


async def test_expired_flows_leave_redis(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, expire_interval=0.05)) as relay:
        await establish(relay, client, transceiver)
        key = keys.flow_key(SHARD, addr_of(client))
        await eventually(lambda: redis_client.exists(key) == 1)
        flow = relay.flows.get(addr_of(client))
        assert flow is not None
        flow.last_seen -= relay.config.idle_timeout + 1  # idle since long ago
        await eventually(lambda: redis_client.exists(key) == 0)
        assert len(relay.flows) == 0 and relay.counters()["flows_expired"] == 1


async def test_send_errors_are_counted_and_the_relay_keeps_forwarding(
    relay: Relay, client: socket.socket, transceiver: socket.socket
) -> None:
    await establish(relay, client, transceiver)
    v6_client = pack_header(("2001:db8::1", 443)) + b"unsendable"  # on a v4 public socket
    for _ in range(3):
        transceiver.sendto(v6_client, relay.internal_addr)
    await eventually(lambda: relay.core.drops[DropReason.SEND_ERROR] == 3)
    transceiver.sendto(pack_header(addr_of(client)) + b"still here", relay.internal_addr)
    assert await recv(client) == (b"still here", relay.public_addr)
    assert relay.counters()["forwarded_out"] == 1


async def drain_frames(sock: socket.socket) -> list[bytes]:
    """Everything the fake transceiver received until the relay has been quiet for 0.3 s."""
    frames = []
    with contextlib.suppress(TimeoutError):
        while len(frames) < 10_000:
            frames.append((await recv(sock, timeout=0.3))[0])
    return frames


async def test_stun_flood_learns_little_and_the_live_call_goes_on(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    """A captured Binding replayed from 300 sources, then 300 fresh ufrags: bounded learning."""
    config = make_config(redis_url, max_flows=100, learn_rate=50.0, learn_burst=40.0)
    async with Relay(config) as relay:
        await establish(relay, client, transceiver)
        transceiver.sendto(pack_header(addr_of(client)) + b"answer", relay.internal_addr)
        assert await recv(client) == (b"answer", relay.public_addr)  # the live flow is confirmed
        captured = binding_request(nonce=b"cap1")
        fresh = [binding_request(nonce=n.to_bytes(4, "big")) for n in range(300)]
        sources = [udp() for _ in range(300)]
        try:
            for sock in sources:
                sock.sendto(captured, relay.public_addr)
            replayed = await drain_frames(transceiver)
            for sock, request in zip(sources, fresh, strict=True):
                sock.sendto(request, relay.public_addr)
            learned = await drain_frames(transceiver)
        finally:
            for sock in sources:
                sock.close()
        drops = relay.core.drops
        assert len(replayed) == 8 and drops[DropReason.UFRAG_FLOWS_FULL] == 300 - 8
        assert 40 <= len(learned) < 100 and drops[DropReason.LEARN_RATE] == 300 - len(learned)
        assert len(relay.flows) <= config.max_flows
        client.sendto(DTLS, relay.public_addr)  # the call was never evicted
        assert await recv(transceiver) == (pack_header(addr_of(client)) + DTLS,
                                           relay.internal_addr)
        await eventually(lambda: len(redis_client.keys(f"edge:flow:{SHARD}:*")) == len(relay.flows))


async def test_a_new_transceiver_is_polled_at_once_not_at_the_next_interval(
    redis_url: str, client: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, registry_interval=30.0)) as relay:
        with contextlib.closing(udp()) as late:  # registers after the relay's first poll
            redis_client.hset(keys.TRANSCEIVERS_KEY, str(XCVR),
                              addresses.format_addr(addr_of(late)))
            late.sendto(pack_header(addr_of(client)) + b"early", relay.internal_addr)
            await eventually(lambda: relay.counters()["registry_repolls"] == 1, timeout=1.0)
            reply = b""
            for _ in range(10):  # the first frame was dropped; the next ones go through
                late.sendto(pack_header(addr_of(client)) + b"hello", relay.internal_addr)
                with contextlib.suppress(TimeoutError):
                    reply = (await recv(client, timeout=0.1))[0]
                    break
            assert reply == b"hello" and relay.core.drops[DropReason.FRAME_UNREGISTERED] >= 1
            await relay.heartbeat()
            beat = heartbeats.RelayHeartbeat.from_json(
                redis_client.get(keys.relay_heartbeat_key(SHARD, 0)) or b"{}")
            assert beat.counters["registry_repolls"] == 1
            assert beat.counters["drop_frame_unregistered"] >= 1
            assert beat.counters["drop_unknown_transceiver"] == 0


async def test_heartbeat_is_published_with_ttl(
    relay: Relay, redis_client: redis.Redis
) -> None:
    key = keys.relay_heartbeat_key(SHARD, 0)
    await eventually(lambda: redis_client.exists(key) == 1)
    beat = heartbeats.RelayHeartbeat.from_json(redis_client.get(key))  # type: ignore[arg-type]
    assert (beat.shard, beat.worker, beat.flows) == (SHARD, 0, 0)
    assert beat.public == addresses.format_addr(relay.public_addr)
    assert {"forwarded_in", "forwarded_out", "learned_stun", "learned_redis"} <= set(beat.counters)
    assert 0 < redis_client.pttl(key) <= 5000


class RedisProxy:
    """A TCP pipe to the real Redis that a test can cut, to make Redis unreachable."""

    def __init__(self, target: Addr) -> None:
        self.target = target
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def test_known_flow_keeps_forwarding_when_redis_is_down(
    redis_url: str, client: socket.socket, transceiver: socket.socket
) -> None:
    parsed = urlparse(redis_url)
    proxy = RedisProxy((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    port = await proxy.start()
    config = make_config(f"redis://127.0.0.1:{port}{parsed.path}")
    async with Relay(config) as relay:
        await establish(relay, client, transceiver)
        await proxy.cut()
        errors = relay.counters()["redis_errors"]
        await eventually(lambda: relay.counters()["redis_errors"] > errors)  # heartbeats fail
        for index in range(5):
            client.sendto(DTLS + bytes([index]), relay.public_addr)
            frame, _ = await recv(transceiver)
            assert frame == pack_header(addr_of(client)) + DTLS + bytes([index])
        transceiver.sendto(pack_header(addr_of(client)) + b"still here", relay.internal_addr)
        assert await recv(client) == (b"still here", relay.public_addr)
        assert relay.core.drops[DropReason.FRAME_UNREGISTERED] == 0  # last known registry kept


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_starts_and_closes_with_redis_dead_from_the_start(client: socket.socket) -> None:
    config = make_config(f"redis://127.0.0.1:{dead_port()}/15")
    async with asyncio.timeout(5):
        async with Relay(config) as relay:
            client.sendto(binding_request(), relay.public_addr)
            client.sendto(DTLS, relay.public_addr)
            await eventually(lambda: relay.core.drops[DropReason.UNKNOWN_TRANSCEIVER] == 1)
            await eventually(lambda: relay.core.drops[DropReason.REDIS_DOWN] == 1)
            assert relay.counters()["redis_errors"] > 0


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_ipv6_public_and_internal(redis_url: str, redis_client: redis.Redis) -> None:
    with contextlib.closing(udp("::1")) as client, contextlib.closing(udp("::1")) as xcvr:
        redis_client.hset(keys.TRANSCEIVERS_KEY, str(XCVR), addresses.format_addr(addr_of(xcvr)))
        config = make_config(redis_url, public=("::1", 0), internal=("::1", 0))
        async with Relay(config) as relay:
            client.sendto(binding_request(), relay.public_addr)
            frame, _ = await recv(xcvr)
            assert parse_header(frame) == (("::1", addr_of(client)[1]), 20)
            xcvr.sendto(pack_header(addr_of(client)) + b"v6", relay.internal_addr)
            assert await recv(client) == (b"v6", relay.public_addr)


async def test_serve_runs_until_cancelled(redis_url: str) -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(serve(make_config(redis_url), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_mixed_stream_gives_the_same_deliveries_and_counters_on_both_paths(
    relay: Relay, client: socket.socket, transceiver: socket.socket
) -> None:
    """Known flows (the C batch loop on the fast path) interleaved with what only the core may
    decide: the deliveries and every counter are the same on both paths."""
    await establish(relay, client, transceiver)
    header = pack_header(addr_of(client))
    with contextlib.closing(udp()) as stranger:
        for index in range(20):
            client.sendto(DTLS + bytes([index]), relay.public_addr)  # known flow
            stranger.sendto(b"\x00garbage", relay.public_addr)  # STUN range, not STUN
            transceiver.sendto(header + bytes([index]), relay.internal_addr)  # confirms, then C
            stranger.sendto(header + b"forged", relay.internal_addr)  # not a transceiver
        transceiver.sendto(b"\xe1\x09short", relay.internal_addr)  # malformed
        frames = [(await recv(transceiver))[0] for _ in range(20)]
        replies = [(await recv(client))[0] for _ in range(20)]
    assert frames == [header + DTLS + bytes([index]) for index in range(20)]
    assert replies == [bytes([index]) for index in range(20)]
    await eventually(lambda: relay.counters()["drop_frame_malformed"] == 1)
    counters = relay.counters()
    assert (counters["forwarded_in"], counters["forwarded_out"]) == (21, 20)
    assert counters["forwarded_in_bytes"] == len(binding_request()) + 20 * (len(DTLS) + 1)
    assert counters["forwarded_out_bytes"] == 20
    assert counters["drop_frame_unregistered"] == 20 and counters["drop_bad_stun"] == 0
    assert counters["drop_stun_not_binding"] + counters["drop_bad_stun"] == 20
    flow = relay.flows.get(addr_of(client))
    assert flow is not None and flow.confirmed


async def test_a_forwarding_flow_does_not_expire_and_removed_flows_leave_the_fast_path(
    redis_url: str, client: socket.socket, transceiver: socket.socket
) -> None:
    async with Relay(make_config(redis_url, expire_interval=0.05)) as relay:
        await establish(relay, client, transceiver)
        flow = relay.flows.get(addr_of(client))
        assert flow is not None
        flow.last_seen -= relay.config.idle_timeout + 1  # idle since long ago, then a packet:
        client.sendto(DTLS, relay.public_addr)
        await recv(transceiver)
        await asyncio.sleep(0.2)  # several expiry rounds
        assert relay.flows.get(addr_of(client)) is flow
        relay.core.expire(flow.last_seen + relay.config.idle_timeout + 1)
        assert len(relay.flows) == 0
        client.sendto(DTLS, relay.public_addr)  # no longer known: the core holds it for Redis
        await eventually(lambda: relay.core.learned_redis + relay.core.drops[
            DropReason.REDIS_MISS] == 1)


async def test_kernel_drops_at_a_full_receive_queue_are_counted(
    redis_url: str, client: socket.socket, transceiver: socket.socket
) -> None:
    """SO_RXQ_OVFL: datagrams the kernel dropped while the relay was busy reach the heartbeat."""
    async with Relay(make_config(redis_url, socket_buffer=4096)) as relay:
        await establish(relay, client, transceiver)
        for _ in range(500):  # the loop is not running: the public queue overflows
            client.sendto(DTLS, relay.public_addr)
        await asyncio.sleep(0.05)
        # The kernel stamps its drop count on the datagrams queued after the drops.
        client.sendto(DTLS, relay.public_addr)
        await eventually(lambda: relay.counters()["drop_rxq_overflow"] > 0)
        await relay.heartbeat()
        assert relay.counters()["drop_rxq_overflow"] + relay.counters()["forwarded_in"] >= 500
