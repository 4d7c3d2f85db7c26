"""Loopback tests of the relay shell: real UDP sockets, real Redis, port 0."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from urllib.parse import urlparse

import pytest
import redis
from aioice import stun as aioice_stun

from relays import registry
from relays.daemon import Relay, RelayConfig, serve
from relays.framing import Addr, pack_header, parse_header
from relays.ufrag import HEALTH_TRANSCEIVER_ID, mint_ufrag

SHARD = 7
XCVR = 3
KEYS = {1: b"loopback-key"}
DTLS = b"\x16\xfe\xfd" + b"\x00" * 10  # RFC 7983: first byte 22 is DTLS


def binding_request(
    *, shard: int = SHARD, transceiver: int = XCVR, key: bytes = KEYS[1], nonce: bytes = b"abcd"
) -> bytes:
    server = mint_ufrag(shard=shard, transceiver=transceiver, key_id=1, key=key, nonce=nonce)
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{server}:cli1"
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(b"x" * 24)
    message.add_fingerprint()
    return bytes(message)


def make_config(redis_url: str, **overrides: object) -> RelayConfig:
    config = RelayConfig(
        shard=SHARD, public=("127.0.0.1", 0), internal=("127.0.0.1", 0), redis_url=redis_url,
        keyring=KEYS, heartbeat_interval=0.05, registry_interval=0.05, flow_write_interval=0.01,
        redis_timeout=0.5,
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
        redis_client.hset(registry.TRANSCEIVERS_KEY, str(XCVR), registry.format_addr(addr_of(sock)))
        yield sock


@pytest.fixture
async def relay(redis_url: str, transceiver: socket.socket) -> AsyncIterator[Relay]:
    async with Relay(make_config(redis_url)) as running:
        yield running


async def establish(relay: Relay, client: socket.socket, transceiver: socket.socket) -> None:
    """Learn the client's flow with a Binding request and check it arrives framed."""
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

    key = registry.flow_key(SHARD, addr_of(client))
    await eventually(lambda: redis_client.get(key) == str(XCVR).encode())
    assert 0 < redis_client.ttl(key) <= registry.FLOW_TTL
    counters = relay.counters()
    assert (counters["learned_stun"], counters["forwarded_in"], counters["forwarded_out"]) == (
        1, 2, 1
    )
    assert not relay.drops


async def test_junk_is_dropped_by_reason_and_live_flow_keeps_working(
    relay: Relay, client: socket.socket, transceiver: socket.socket
) -> None:
    await establish(relay, client, transceiver)
    rng = random.Random(42)
    response = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE)
    with contextlib.closing(udp()) as stranger, contextlib.closing(udp()) as impostor:
        stranger.sendto(bytes(response), relay.public_addr)
        stranger.sendto(binding_request(key=b"wrong-key"), relay.public_addr)
        stranger.sendto(binding_request(shard=SHARD + 1), relay.public_addr)
        stranger.sendto(binding_request(transceiver=HEALTH_TRANSCEIVER_ID), relay.public_addr)
        stranger.sendto(binding_request(transceiver=99), relay.public_addr)
        stranger.sendto(b"\x00\x01\x00\x00", relay.public_addr)  # STUN class, too short
        stranger.sendto(DTLS, relay.public_addr)  # unknown + non-STUN: Redis miss
        for _ in range(5):  # one lookup holds 4 datagrams, the 5th overflows
            junk = rng.randbytes(rng.randrange(1, 200))
            impostor.sendto(bytes([rng.randrange(128, 192)]) + junk, relay.public_addr)
        impostor.sendto(pack_header(addr_of(client)) + b"spoof", relay.internal_addr)
        transceiver.sendto(b"\xe1\x09garbage", relay.internal_addr)
        await eventually(lambda: sum(relay.drops.values()) >= 13)
        client.sendto(DTLS, relay.public_addr)
        assert await recv(transceiver) == (pack_header(addr_of(client)) + DTLS, relay.internal_addr)
    assert relay.drops == {
        "stun_not_binding": 2, "bad_ufrag": 1, "wrong_shard": 1,
        "unknown_transceiver": 1, "redis_miss": 5, "lookup_queue_full": 1,
        "frame_unregistered": 1, "frame_malformed": 1,
    }
    assert relay.counters()["drop_redis_miss"] == 5
    assert relay.health_answered == 1  # the health probe is answered, not dropped
    assert len(relay.flows) == 1


async def test_health_probe_is_answered_by_the_relay_and_learns_nothing(
    relay: Relay, client: socket.socket
) -> None:
    from relays.stun import parse_xor_mapped_address, transaction_id

    request = binding_request(transceiver=HEALTH_TRANSCEIVER_ID)
    client.sendto(request, relay.public_addr)
    reply, source = await recv(client)
    assert source == relay.public_addr
    assert transaction_id(reply) == transaction_id(request)
    assert parse_xor_mapped_address(reply) == addr_of(client)
    assert len(relay.flows) == 0 and not relay.drops
    assert relay.counters()["health_answered"] == 1
    client.sendto(binding_request(transceiver=HEALTH_TRANSCEIVER_ID, key=b"forged"),
                  relay.public_addr)  # only the cluster can probe: a bad MAC is dropped
    await eventually(lambda: relay.drops["bad_ufrag"] == 1)
    assert relay.health_answered == 1


async def test_drain_request_waits_for_quiet_flows_then_sets_drained(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, drain_idle=0.3)) as relay:
        await establish(relay, client, transceiver)
        redis_client.set(registry.drain_key("relay", SHARD), "test")
        await eventually(lambda: relay.draining)
        beat = registry.RelayHeartbeat.from_json(
            redis_client.get(registry.relay_heartbeat_key(SHARD, 0)) or b"{}"
        )
        await eventually(lambda: relay.drained.is_set(), timeout=5.0)
        assert relay.draining and beat.shard == SHARD


async def test_redis_miss_is_negative_cached(
    relay: Relay, client: socket.socket, redis_client: redis.Redis
) -> None:
    client.sendto(DTLS, relay.public_addr)
    await eventually(lambda: relay.drops["redis_miss"] == 1)
    redis_client.set(registry.flow_key(SHARD, addr_of(client)), XCVR)
    client.sendto(DTLS, relay.public_addr)  # still negative-cached: no second lookup
    await eventually(lambda: relay.drops["redis_miss"] == 2)
    assert relay.learned_redis == 0


async def test_flow_written_by_one_relay_is_used_by_a_fresh_one(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url)) as first:
        await establish(first, client, transceiver)
        key = registry.flow_key(SHARD, addr_of(client))
        await eventually(lambda: redis_client.exists(key) == 1)
    async with Relay(make_config(redis_url)) as second:
        for _ in range(3):  # held while the lookup is in flight, then forwarded in order
            client.sendto(DTLS, second.public_addr)
        for _ in range(3):
            frame, source = await recv(transceiver)
            assert (frame, source) == (pack_header(addr_of(client)) + DTLS, second.internal_addr)
        assert second.learned_redis == 1 and second.learned_stun == 0


async def test_frame_from_registered_transceiver_teaches_a_fresh_relay(
    relay: Relay, client: socket.socket, transceiver: socket.socket
) -> None:
    transceiver.sendto(pack_header(addr_of(client)) + b"hello", relay.internal_addr)
    assert await recv(client) == (b"hello", relay.public_addr)
    client.sendto(DTLS, relay.public_addr)
    assert await recv(transceiver) == (pack_header(addr_of(client)) + DTLS, relay.internal_addr)
    assert (relay.learned_frame, relay.learned_redis) == (1, 0)


async def test_flow_table_bound_and_idle_expiry(
    redis_url: str, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, max_flows=2)) as relay:
        clients = [udp() for _ in range(3)]
        try:
            for sock in clients:
                sock.sendto(binding_request(), relay.public_addr)
                await recv(transceiver)
            assert len(relay.flows) == 2 and relay.counters()["flows_evicted"] == 1
            assert relay.flows.get(addr_of(clients[0])) is None
            keys = [registry.flow_key(SHARD, addr_of(sock)) for sock in clients[1:]]
            await eventually(lambda: redis_client.exists(*keys) == 2)

            now = asyncio.get_running_loop().time()
            assert relay.expire_idle(now + 1.0) == []
            gone = relay.expire_idle(now + relay.config.idle_timeout + 1.0)
            assert {flow.client for flow in gone} == {addr_of(sock) for sock in clients[1:]}
            assert len(relay.flows) == 0 and relay.counters()["flows_expired"] == 2
            await eventually(lambda: redis_client.exists(*keys) == 0)
        finally:
            for sock in clients:
                sock.close()


async def test_active_flows_are_rewritten_to_redis(
    redis_url: str, client: socket.socket, transceiver: socket.socket, redis_client: redis.Redis
) -> None:
    async with Relay(make_config(redis_url, flow_refresh_interval=0.05)) as relay:
        await establish(relay, client, transceiver)
        key = registry.flow_key(SHARD, addr_of(client))
        await eventually(lambda: redis_client.exists(key) == 1)
        redis_client.delete(key)  # e.g. Redis restarted without persistence
        client.sendto(DTLS, relay.public_addr)
        await recv(transceiver)
        await eventually(lambda: redis_client.get(key) == str(XCVR).encode())


async def test_heartbeat_is_published_with_ttl(
    relay: Relay, redis_client: redis.Redis
) -> None:
    key = registry.relay_heartbeat_key(SHARD, 0)
    await eventually(lambda: redis_client.exists(key) == 1)
    beat = registry.RelayHeartbeat.from_json(redis_client.get(key))  # type: ignore[arg-type]
    assert (beat.shard, beat.worker, beat.flows) == (SHARD, 0, 0)
    assert beat.public == registry.format_addr(relay.public_addr)
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
        errors = relay.redis_errors
        await eventually(lambda: relay.redis_errors > errors)  # heartbeat/poll now fail
        for index in range(5):
            client.sendto(DTLS + bytes([index]), relay.public_addr)
            frame, _ = await recv(transceiver)
            assert frame == pack_header(addr_of(client)) + DTLS + bytes([index])
        transceiver.sendto(pack_header(addr_of(client)) + b"still here", relay.internal_addr)
        assert await recv(client) == (b"still here", relay.public_addr)
        assert relay.drops["frame_unregistered"] == 0  # last known registry kept


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
            await eventually(lambda: relay.drops["unknown_transceiver"] == 1)
            await eventually(lambda: relay.drops["redis_down"] == 1)
            assert relay.redis_errors > 0


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
        redis_client.hset(registry.TRANSCEIVERS_KEY, str(XCVR), registry.format_addr(addr_of(xcvr)))
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
