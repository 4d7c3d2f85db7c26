"""Hostile HTTP against a real daphne (``signaling_site.http_server``): a 1 GiB declared or
streamed body is refused with 413 at once without the process growing; slow headers and too many
connections from one address are cut off. The ASGI middleware does the same for any server."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from channels.testing import HttpCommunicator

from signaling_site.redis_server import free_port
from whip.launch import fresh_postgres_database

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
MB = 1 << 20
SESSION_ID = "00000000-0000-4000-8000-0000000000aa"
MAKE_SESSION = (
    "from calls.models import Session; from tests.dashboard.fleet import make_nodes, make_region;"
    " relay, xcvr = make_nodes(make_region('local', default=True), 1);"
    f" Session.objects.create(id='{SESSION_ID}', region=relay.region, relay=relay,"
    " transceiver=xcvr, ufrag='uwebsocketidletest')"
)


@dataclass
class Daphne:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path  # its stderr

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Daphne]:
    port = free_port()
    env = {**os.environ, "EDGE_VAR_DIR": str(tmp_path_factory.mktemp("var")),
           "REDIS_URL": redis_url, "HTTP_HEADER_TIMEOUT": "1.5", "HTTP_IDLE_TIMEOUT": "1",
           "HTTP_MAX_CONNECTIONS_PER_ADDRESS": "3", "TRUSTED_PROXIES": "192.0.2.1/32"}
    if env.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        # a database of its own, as SQLite under EDGE_VAR_DIR gives it (the shared one may hold
        # another module's rows)
        env["DATABASE_URL"] = fresh_postgres_database(env["DATABASE_URL"])
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run([*manage, "shell", "-c", MAKE_SESSION], env=env, cwd=ROOT, check=True,
                   timeout=60)
    log = tmp_path_factory.mktemp("log") / "daphne.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling_site.http_server", "-b", "127.0.0.1", "-p", str(port),
         "signaling_site.asgi:application"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "daphne did not start"
            time.sleep(0.1)
    yield Daphne(port, proc, log)
    proc.terminate()
    proc.wait(timeout=10)


def _push_until_answer(sock: socket.socket, chunk: bytes, limit: int) -> bytes:
    """Send ``chunk`` repeatedly (at most ``limit`` bytes) until the server answers."""
    sent = 0
    while sent < limit:
        readable, writable, _ = select.select([sock], [sock], [], 2.0)
        if readable:
            break
        if writable:
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
    sock.settimeout(2.0)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _assert_413_fast(daphne: Daphne, head: bytes, chunk: bytes) -> None:
    before = daphne.rss()
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        started = time.monotonic()
        sock.sendall(head)
        answer = _push_until_answer(sock, chunk, 256 * MB)
        elapsed = time.monotonic() - started
    grown = daphne.rss() - before
    logger.info("413 after %.3f s; daphne RSS %d MB, grew %.1f MB", elapsed,
                daphne.rss() // MB, grown / MB)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in status
    assert json.loads(body)["code"] == "too_large"
    assert elapsed < 1.0 and grown < 50 * MB


def test_startup_objects_are_frozen_before_serving(daphne: Daphne) -> None:
    """Every view imported, then what starting made taken out of the collector's walks
    (``fleet.startup``): a full collection would otherwise stall requests ~80 ms."""
    assert "froze" in daphne.log.read_text(errors="replace")


def test_declared_one_gib_body_is_413_at_once(daphne: Daphne) -> None:
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % GIB)
    _assert_413_fast(daphne, head, b"x" * MB)


def test_chunked_body_over_the_limit_is_413_while_streaming(daphne: Daphne) -> None:
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n\r\n")
    _assert_413_fast(daphne, head, b"%x\r\n%s\r\n" % (MB, b"x" * MB))


def test_slow_headers_are_cut_off(daphne: Daphne) -> None:
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while True:  # a header line every 0.2 s: never idle, never complete
            try:  # (a blocking socket, so MSG_DONTWAIT polls without waiting)
                sock.sendall(b"X-Slow: 1\r\n")
                if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    break
            except BlockingIOError:
                time.sleep(0.2)
            except (ConnectionResetError, BrokenPipeError):
                break
            assert time.monotonic() - started < 4, "slow headers were not cut off"
    assert 1.4 < time.monotonic() - started < 3


def test_connections_per_address_are_capped(daphne: Daphne) -> None:
    held = [socket.create_connection(("127.0.0.1", daphne.port)) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", daphne.port)) as extra:
            extra.settimeout(1)
            assert extra.recv(1) == b""  # closed without a word
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 ")
    finally:
        for sock in held:
            sock.close()


async def test_asgi_middleware_refuses_declared_and_streamed_bodies(settings: object) -> None:
    from signaling_site.asgi import application

    declared = HttpCommunicator(application, "POST", "/v1/sessions", body=b"v=0",
                                headers=[(b"content-type", b"application/sdp"),
                                         (b"content-length", str(GIB).encode())])
    response = await declared.get_response()
    assert response["status"] == 413 and json.loads(response["body"])["code"] == "too_large"
    streamed = HttpCommunicator(application, "POST", "/v1/sessions", body=b"x" * (300 * 1024),
                                headers=[(b"content-type", b"application/sdp")])
    response = await streamed.get_response()
    assert response["status"] == 413


def test_websocket_passes_the_guard_and_outlives_the_idle_timeout(daphne: Daphne) -> None:
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        sock.settimeout(5)
        sock.sendall(f"GET /ws/sessions/{SESSION_ID} HTTP/1.1\r\n".encode()
                     + b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        handshake = sock.recv(4096)
        assert handshake.startswith(b"HTTP/1.1 101 "), handshake
        if b"session.state" not in handshake:
            assert b"session.state" in sock.recv(4096)  # the first message: the stored state
        time.sleep(2.5)  # idle well past HTTP_IDLE_TIMEOUT (1 s)
        sock.sendall(bytes([0x89, 0x80]) + os.urandom(4))  # masked ping, no payload
        assert sock.recv(2) == bytes([0x8A, 0x00])  # pong: still open
