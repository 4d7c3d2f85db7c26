"""Loopback tests of the relay's ICE-TCP shell: real TCP and UDP sockets, real Redis, port 0.
The decisions are tested on the core (test_tcpmux.py); these prove the shell carries them out,
and that garbage on the TCP port is closed and counted while live calls go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import uvloop

from fleet import addresses, keys
from fleet.addresses import Addr
from relays.daemon import Relay
from relays.framing import pack_header, parse_header
from relays.tcpmux import LENGTH, TcpLimits, is_alias, pack_frame
from tests.relays.conftest import DTLS, XCVR, binding_request
from tests.relays.test_daemon import addr_of, eventually, make_config, udp

LIMITS = TcpLimits(first_timeout=1.0, max_per_ip=64, max_connections=3000)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Both loops: production runs uvloop, whose transports are no ``asyncio.Transport``."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def transceiver(redis_client: redis.Redis) -> Iterator[socket.socket]:
    with contextlib.closing(udp()) as sock:
        redis_client.hset(keys.TRANSCEIVERS_KEY, str(XCVR), addresses.format_addr(addr_of(sock)))
        yield sock


@pytest.fixture
async def relay(redis_url: str, transceiver: socket.socket) -> AsyncIterator[Relay]:
    config = make_config(redis_url, tcp=("127.0.0.1", 0), tcp_limits=LIMITS)
    async with Relay(config) as running:
        yield running


async def recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, Addr]:
    """A datagram from non-blocking ``sock`` (polled: uvloop has no ``sock_recvfrom``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data, source = sock.recvfrom(65535)
            return data, (source[0], source[1])
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError("no datagram") from None
            await asyncio.sleep(0.002)


def tcp_addr(relay: Relay) -> Addr:
    assert relay.tcp is not None
    return relay.tcp.address


async def read_frame(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    (size,) = LENGTH.unpack(await asyncio.wait_for(reader.readexactly(2), timeout))
    return await asyncio.wait_for(reader.readexactly(size), timeout)


async def closed_by_relay(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True when the relay ends the stream (EOF or reset) within ``timeout``."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return data == b""


async def tcp_call(relay: Relay, transceiver: socket.socket) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, Addr
]:
    """Open a connection, bind it with a Binding request, return it and its alias."""
    reader, writer = await asyncio.open_connection(*tcp_addr(relay))
    request = binding_request()
    writer.write(pack_frame(request))
    frame, source = await recv(transceiver)
    assert source == relay.internal_addr
    alias, offset = parse_header(frame)
    assert frame[offset:] == request and is_alias(alias)
    return reader, writer, alias


async def test_a_bound_connection_reaches_the_transceiver_and_gets_its_replies(
    relay: Relay, transceiver: socket.socket
) -> None:
    reader, writer, alias = await tcp_call(relay, transceiver)
    transceiver.sendto(pack_header(alias) + b"binding-success", relay.internal_addr)
    assert await read_frame(reader) == b"binding-success"
    writer.write(pack_frame(DTLS)[:3])  # a partial frame, then the rest
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(pack_frame(DTLS)[3:])
    assert await recv(transceiver) == (pack_header(alias) + DTLS, relay.internal_addr)
    counters = relay.counters()
    assert (counters["tcp_connections"], counters["tcp_bound"]) == (1, 1)
    assert (counters["tcp_forwarded_in"], counters["tcp_forwarded_out"]) == (2, 1)
    writer.close()
    await eventually(lambda: relay.counters()["tcp_closed_peer_closed"] == 1)
    assert relay.counters()["tcp_connections"] == 0
    # the alias is gone: a late reply is dropped, never sent as UDP to 100.64/10
    transceiver.sendto(pack_header(alias) + b"late", relay.internal_addr)
    await eventually(lambda: relay.counters()["tcp_drop_gone"] == 1)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (os.urandom(4096), None),  # either too large or not a Binding, by chance
        (pack_frame(binding_request(key=b"wrong-key")), "bad_binding"),
        (b"\xff\xff" + b"x" * 100, "frame_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "frame_too_large"),  # "GE" = 18245 bytes
        (pack_frame(DTLS), "not_binding"),
    ],
    ids=["random", "bad-ufrag", "huge-length", "http", "dtls-first"],
)
async def test_garbage_is_closed_and_counted(
    relay: Relay, transceiver: socket.socket, garbage: bytes, reason: str | None
) -> None:
    reader, writer = await asyncio.open_connection(*tcp_addr(relay))
    writer.write(garbage)
    assert await closed_by_relay(reader)
    counters = relay.counters()
    closed = {k: v for k, v in counters.items() if k.startswith("tcp_closed_") and v}
    if reason is None:
        assert sum(closed.values()) == 1 and set(closed) <= {
            "tcp_closed_frame_too_large", "tcp_closed_not_binding", "tcp_closed_bad_binding"}
    else:
        assert closed == {f"tcp_closed_{reason}": 1}
    assert counters["tcp_connections"] == 0 and counters["forwarded_in"] == 0
    writer.close()


async def test_slowloris_without_a_binding_is_closed_at_the_deadline(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection(*tcp_addr(relay))
    started = time.monotonic()
    writer.write(b"\x00")  # the first byte of a length, then nothing
    assert await closed_by_relay(reader, timeout=4.0)
    waited = time.monotonic() - started
    assert LIMITS.first_timeout <= waited < LIMITS.first_timeout + 1.5
    assert relay.counters()["tcp_closed_first_timeout"] == 1
    writer.close()


async def test_a_client_that_does_not_read_costs_dropped_replies_not_memory(
    redis_url: str, transceiver: socket.socket
) -> None:
    limits = TcpLimits(max_write_buffer=16 * 1024)
    config = make_config(redis_url, tcp=("127.0.0.1", 0), tcp_limits=limits)
    async with Relay(config) as relay:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        client.connect(tcp_addr(relay))
        client.sendall(pack_frame(binding_request()))
        frame, _ = await recv(transceiver)
        alias, _ = parse_header(frame)
        reply = pack_header(alias) + b"r" * 1000
        sent = 0
        for _ in range(40):  # up to ~8 MB toward a client that reads nothing
            for _ in range(200):
                transceiver.sendto(reply, relay.internal_addr)
            sent += 200
            await asyncio.sleep(0.01)
            if relay.counters()["tcp_drop_write_full"] > 1000:
                break
        await eventually(lambda: relay.counters()["tcp_drop_write_full"] > 0)
        counters = relay.counters()
        assert counters["tcp_forwarded_out"] + counters["tcp_drop_write_full"] <= sent
        assert counters["tcp_drop_write_full"] > 0
        assert relay.tcp is not None
        [conn] = relay.tcp.protocols.values()  # what waits in user space stays under the cap
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() <= limits.max_write_buffer
        client.close()


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _udp_echo_call(relay: Relay, count: int, interval: float) -> float:
    """A UDP client sends ``count`` packets through the relay to the echoing stand-in
    transceiver; the share echoed back."""
    with contextlib.closing(udp()) as client:
        client.sendto(binding_request(nonce=b"udpc"), relay.public_addr)
        await asyncio.sleep(0.05)
        received = 0
        loop = asyncio.get_running_loop()
        for index in range(count):
            client.sendto(b"\x80" + index.to_bytes(4, "big") + b"a" * 155, relay.public_addr)
            deadline = loop.time() + interval
            while loop.time() < deadline:
                try:
                    data = client.recv(2048)
                except BlockingIOError:
                    await asyncio.sleep(0.002)
                    continue
                received += data[:1] == b"\x80"
        await asyncio.sleep(0.2)
        with contextlib.suppress(BlockingIOError):
            while True:
                received += client.recv(2048)[:1] == b"\x80"
        return received / count


async def _echo(transceiver: socket.socket, internal: Addr) -> None:
    """The stand-in transceiver echoes every frame back to the client it names."""
    while True:
        frame, _ = await recv(transceiver, 3600.0)  # cancelled at the end of the test
        if frame[8:9] == b"\x80":
            transceiver.sendto(frame, internal)


async def test_two_thousand_idle_connections_are_closed_while_calls_keep_their_echo(
    redis_url: str, transceiver: socket.socket
) -> None:
    _raise_fd_limit(8192)
    limits = TcpLimits(first_timeout=2.0, max_per_ip=3000, max_connections=2500)
    config = make_config(redis_url, tcp=("127.0.0.1", 0), tcp_limits=limits)
    async with Relay(config) as relay:
        tcp_reader, tcp_writer, alias = await tcp_call(relay, transceiver)
        echo = asyncio.create_task(_echo(transceiver, relay.internal_addr))  # after: one reader
        loop = asyncio.get_running_loop()
        idle: list[socket.socket] = []

        async def flood() -> None:
            for _ in range(2000):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect_ex(tcp_addr(relay))
                idle.append(sock)
                if len(idle) % 50 == 0:
                    await asyncio.sleep(0.01)

        async def tcp_echo_share(count: int) -> float:
            got = 0
            for index in range(count):
                tcp_writer.write(pack_frame(b"\x80" + index.to_bytes(4, "big") + b"t" * 155))
                with contextlib.suppress(TimeoutError):
                    got += (await read_frame(tcp_reader, 0.5))[:1] == b"\x80"
                await asyncio.sleep(0.02)
            return got / count

        try:
            started = loop.time()
            udp_share, tcp_share, _ = await asyncio.gather(
                _udp_echo_call(relay, 150, 0.02), tcp_echo_share(150), flood()
            )
            assert relay.counters()["tcp_accepted"] >= 2000
            await eventually(lambda: relay.counters()["tcp_connections"] == 1, timeout=10.0)
            counters = relay.counters()
            assert counters["tcp_closed_first_timeout"] == 2000
            assert loop.time() - started < 20
            assert udp_share >= 0.95, udp_share
            assert tcp_share >= 0.95, tcp_share
        finally:
            echo.cancel()
            for sock in idle:
                sock.close()
            tcp_writer.close()
