"""``manage.py run_transceiver`` as a process: 10 concurrent calls on exactly ONE UDP socket."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from fleet.addresses import parse_addr
from fleet.keys import TRANSCEIVERS_KEY, transceiver_heartbeat_key
from tests.transceivers.conftest import TONE_HZ, Client, Framer, dominant_frequency, open_session
from transceivers import control

ROOT = Path(__file__).resolve().parents[2]
CALLS = 10
TRANSCEIVER_ID = 4321

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    address: tuple[str, int]
    log: Path  # its stderr


def manage(env: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


@pytest.fixture
def daemon(tmp_path: Path, redis_url: str) -> Iterator[Daemon]:
    env = {**os.environ, "EDGE_VAR_DIR": str(tmp_path), "REDIS_URL": redis_url}
    subprocess.run(manage(env, "migrate", "-v0"), env=env, check=True, cwd=ROOT)
    ensure = "from geo.services import region_ensure_default as r; r()"
    subprocess.run(manage(env, "shell", "-c", ensure), env=env, check=True, cwd=ROOT,
                   capture_output=True)
    client = redis.Redis.from_url(redis_url)
    client.hdel(TRANSCEIVERS_KEY, str(TRANSCEIVER_ID))
    log = tmp_path / "run_transceiver.log"
    proc = subprocess.Popen(
        manage(env, "run_transceiver", "--id", str(TRANSCEIVER_ID), "--bind", "127.0.0.1:0",
               "--capacity", "50"),
        env=env, cwd=ROOT, stderr=log.open("wb"),
    )
    try:
        deadline = time.monotonic() + 30
        while (bound := client.hget(TRANSCEIVERS_KEY, str(TRANSCEIVER_ID))) is None:
            assert proc.poll() is None, "run_transceiver exited"
            assert time.monotonic() < deadline, "run_transceiver did not register"
            time.sleep(0.05)
        yield Daemon(proc, parse_addr(bound.decode()), log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.close()


def udp_sockets(pid: int) -> list[object]:
    return list(psutil.Process(pid).net_connections(kind="udp"))


async def echo_fraction(client: Client, seconds: float) -> float:
    assert client.echo is not None
    track = await asyncio.wait_for(client.echo, 10)
    freqs = [dominant_frequency(await asyncio.wait_for(track.recv(), 10))]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        freqs.append(dominant_frequency(await asyncio.wait_for(track.recv(), 2)))
    # Frame rate is logged, not asserted: with ten clients in this process it varies with machine
    # load (28..108 frames per 2 s seen); the single-call test asserts the rate.
    freqs = freqs[1:]  # the decoder's first frame is a ramp-up
    bad = [(i, round(f)) for i, f in enumerate(freqs) if abs(f - TONE_HZ) > 5]
    logger.info("echo: %d frames, off-tone %s", len(freqs), bad)
    return 1 - len(bad) / len(freqs)


async def test_ten_calls_one_socket_then_sigterm(daemon: Daemon, redis_url: str) -> None:
    # what starting made is out of the collector's walks (fleet.startup) before calls come
    assert "froze" in daemon.log.read_text(errors="replace")
    clients = [Client() for _ in range(CALLS)]
    async with Framer(daemon.address) as framer:
        await asyncio.gather(*(open_session(TRANSCEIVER_ID, framer, c) for c in clients))
        await asyncio.gather(*(c.wait_connected(15) for c in clients))
        fractions = await asyncio.gather(*(echo_fraction(c, 2.0) for c in clients))
        # This one test process runs all ten clients' Opus encoders and decoders, so it (not the
        # transceiver) drops the odd packet; the single-call test holds the 95 % bar.
        assert min(fractions) >= 0.85, fractions

        sockets = udp_sockets(daemon.proc.pid)
        assert len(sockets) == 1, sockets
        assert tuple(sockets[0].laddr) == daemon.address  # type: ignore[attr-defined]
        status = await control.request_ping(transceiver_id=TRANSCEIVER_ID, timeout=5)
        assert status["sessions"] == CALLS and status["connected"] == CALLS
        logger.info("transceiver status with %d calls: %s", CALLS, status)

        # SIGTERM drains: the process stays while calls are live, and leaves once they end.
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert daemon.proc.poll() is None, "a draining transceiver left with live calls"
        for client in clients:
            await client.pc.close()
        # Each close reaches the transceiver as a DTLS close_notify at once; one lost on a busy
        # machine leaves that session to ICE consent expiry (30 s in aioice), hence 45 s.
        assert await asyncio.to_thread(daemon.proc.wait, 45) == 0
    check = redis.Redis.from_url(redis_url)
    assert check.hget(TRANSCEIVERS_KEY, str(TRANSCEIVER_ID)) is None
    assert check.get(transceiver_heartbeat_key(TRANSCEIVER_ID)) is None
    check.close()


@pytest.mark.parametrize(("flags", "message"), [
    (["--bind", "0.0.0.0:0"], "--advertise HOST:PORT is required when binding 0.0.0.0"),
    (["--bind", "0.0.0.0:0", "--advertise", "127.0.0.1:0"], "--advertise needs a routable"),
])
def test_run_transceiver_wildcard_bind_needs_an_advertised_address(
    flags: list[str], message: str
) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=message):
        call_command("run_transceiver", "--id", "9", *flags)
