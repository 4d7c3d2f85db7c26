"""The relay's management commands: ``ufrag`` in-process, ``run_relay`` as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command

from fleet import addresses, heartbeats, keys
from relays.framing import pack_header, parse_header
from relays.ufrag import mint_ufrag, validate_ufrag
from tests.relays.test_daemon import binding_request

MANAGE = Path(settings.BASE_DIR) / "manage.py"


def _call(*args: str) -> str:
    out = StringIO()
    call_command("ufrag", *args, stdout=out)
    return out.getvalue().strip()


def test_ufrag_mint_then_decode() -> None:
    text = _call("mint", "--shard", "7", "--transceiver", "3")
    claims = validate_ufrag(text, keys=settings.UFRAG_KEYRING)
    assert (claims.shard, claims.transceiver) == (7, 3)
    lines = _call("decode", text).splitlines()
    assert lines[:4] == ["version: 1", f"key id: {claims.key_id}", "shard: 7", "transceiver: 3"]
    assert lines[4] == f"nonce: {claims.nonce.hex()}"
    assert lines[5] == "verified: yes"


def test_ufrag_decode_forged_and_garbage() -> None:
    forged = mint_ufrag(shard=1, transceiver=2, key_id=15, key=b"x", nonce=b"abcd")
    assert _call("decode", forged).splitlines()[-1] == "verified: no (unknown ufrag key)"
    with pytest.raises(CommandError, match="cannot decode: bad ufrag length"):
        _call("decode", "short")
    with pytest.raises(CommandError, match="node id out of range"):
        _call("mint", "--shard", "70000", "--transceiver", "1")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _endpoints(redis_client: redis.Redis, host: str = "127.0.0.1", xcvr_buffer: int = 0
               ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A stand-in transceiver's UDP socket, registered in Redis as transceiver 3, and a
    caller's, both bound on ``host`` (IPv4 or IPv6); ``xcvr_buffer``: its receive buffer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as xcvr, \
            socket.socket(family, socket.SOCK_DGRAM) as client:
        if xcvr_buffer:
            xcvr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, xcvr_buffer)
        xcvr.bind((host, 0))
        client.bind((host, 0))
        redis_client.hset(keys.TRANSCEIVERS_KEY, "3",
                          addresses.format_addr(xcvr.getsockname()[:2]))
        yield xcvr, client


@pytest.fixture
def project_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A throwaway var dir (SQLite, secrets) with migrations and the default region."""
    env = dict(os.environ, EDGE_VAR_DIR=str(tmp_path), REDIS_URL=redis_url,
               SECRET_KEY="run-relay-test-secret", UFRAG_KEYS="1:run-relay-test-key")
    run = [sys.executable, str(MANAGE)]
    subprocess.run([*run, "migrate", "-v", "0"], env=env, check=True, timeout=120)
    subprocess.run([*run, "shell", "-c", "from geo.services import region_ensure_default; "
                    "region_ensure_default()"], env=env, check=True, timeout=60)
    yield env


def test_run_relay_refuses_port_zero_with_workers(project_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(MANAGE), "run_relay", "--shard", "5", "--public", "127.0.0.1:0",
         "--internal", "127.0.0.1:0", "--workers", "2"],
        env=project_env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "port 0 is not allowed" in result.stderr


def test_run_relay_two_workers_forward_and_stop_on_sigterm(
    project_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    public, internal = _free_udp_port(), _free_udp_port()
    with _endpoints(redis_client) as (xcvr, client):
        xcvr.settimeout(0.2)
        proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5", "--workers", "2",
             "--public", f"127.0.0.1:{public}", "--internal", f"127.0.0.1:{internal}"],
            env=project_env, stderr=(tmp_path / "relay.log").open("wb"),
        )
        try:
            deadline = time.monotonic() + 30
            beats = [keys.relay_heartbeat_key(5, worker) for worker in (0, 1)]
            while redis_client.exists(*beats) < 2:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            request = binding_request(shard=5, key=b"run-relay-test-key")
            frame = b""
            while not frame:  # a worker may still be loading the registry
                assert time.monotonic() < deadline
                client.sendto(request, ("127.0.0.1", public))
                try:
                    frame = xcvr.recv(65535)
                except TimeoutError:
                    continue
            assert parse_header(frame)[0] == client.getsockname()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    # once, in the parent, before the workers forked (fleet.startup)
    assert (tmp_path / "relay.log").read_text(errors="replace").count("froze") == 1


def test_run_relay_drops_what_queued_while_it_was_frozen(
    project_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """SIGSTOP the relay 3 s while a caller keeps sending (100/s): after SIGCONT only the
    datagrams younger than max_queue_age (0.5 s) reach the transceiver, not 3 s in one burst."""
    public, internal = _free_udp_port(), _free_udp_port()
    with _endpoints(redis_client, xcvr_buffer=1 << 21) as (xcvr, client):  # holds a full replay
        proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5",
             "--public", f"127.0.0.1:{public}", "--internal", f"127.0.0.1:{internal}"],
            env=project_env,
        )
        try:
            _establish(proc, xcvr, client, public, redis_client)
            sent, resumed = _send_through_a_freeze(proc, client, xcvr, public)
            arrived = _drain(xcvr)
            beat = _stale_count(redis_client)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    frozen = list(range(50, 350))  # sent while the relay was stopped
    fresh_after = [seq for seq in frozen if resumed - sent[seq] <= 0.5 - 0.2]  # 0.2: wake-up
    replayed = [seq for seq in arrived if seq in frozen]
    assert set(fresh_after) - set(replayed) == set()  # the last ~0.5 s still goes through
    assert all(resumed - sent[seq] <= 0.5 + 0.25 for seq in replayed), "stale audio replayed"
    assert len(replayed) < len(frozen) / 3
    assert arrived == [*range(50), *replayed, *range(350, 450)]  # nothing lost before or after
    assert beat >= len(frozen) - len(replayed) - 5


def _establish(proc: subprocess.Popen[bytes], xcvr: socket.socket, client: socket.socket,
               public: int, redis_client: redis.Redis, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + 30
    while not redis_client.exists(keys.relay_heartbeat_key(5, 0)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    xcvr.settimeout(0.2)
    request, frame = binding_request(shard=5, key=b"run-relay-test-key"), b""
    while not frame:  # the relay may still be loading the registry
        assert time.monotonic() < deadline
        client.sendto(request, (host, public))
        with contextlib.suppress(TimeoutError):
            frame = xcvr.recv(65535)
    _drain(xcvr)


def _send_through_a_freeze(
    proc: subprocess.Popen[bytes], client: socket.socket, xcvr: socket.socket, public: int
) -> tuple[dict[int, float], float]:
    """450 numbered datagrams at 100/s; the relay is stopped from #50 to #350."""
    sent: dict[int, float] = {}
    resumed = 0.0
    for seq in range(450):
        if seq == 50:
            time.sleep(0.2)  # #49 is forwarded before the freeze, even on a busy machine
            proc.send_signal(signal.SIGSTOP)
        if seq == 350:
            proc.send_signal(signal.SIGCONT)
            resumed = time.time()
        sent[seq] = time.time()
        client.sendto(b"\x17" + seq.to_bytes(4, "big"), ("127.0.0.1", public))  # DTLS-looking
        time.sleep(0.01)
    return sent, resumed


def _drain(xcvr: socket.socket) -> list[int]:
    """Sequence numbers of every frame the fake transceiver holds, until 0.5 s of silence."""
    xcvr.settimeout(0.5)
    seqs: list[int] = []
    with contextlib.suppress(TimeoutError):
        while len(seqs) < 10_000:
            payload = parse_frame(xcvr.recv(65535))
            if payload[:1] == b"\x17":
                seqs.append(int.from_bytes(payload[1:5], "big"))
    return seqs


def parse_frame(frame: bytes) -> bytes:
    return frame[parse_header(frame)[1]:]


def _stale_count(redis_client: redis.Redis) -> int:
    """``drop_stale`` from the relay's heartbeat, once a heartbeat after the freeze has it."""
    deadline = time.monotonic() + 5
    while True:
        raw = redis_client.get(keys.relay_heartbeat_key(5, 0))
        counters = heartbeats.RelayHeartbeat.from_json(raw).counters if raw else {}
        if counters.get("drop_stale", 0) > 0 or time.monotonic() > deadline:
            return int(counters.get("drop_stale", 0))
        time.sleep(0.1)


def test_run_relay_refuses_wildcard_without_advertise(project_env: dict[str, str]) -> None:
    for flags, message in (
        (["--public", "0.0.0.0:0", "--internal", "127.0.0.1:0"], "--advertise HOST:PORT is "),
        (["--public", "127.0.0.1:0", "--internal", "0.0.0.0:0"], "--internal-advertise HOST:"),
        (["--public", "0.0.0.0:0", "--advertise", "0.0.0.0:3478", "--internal", "127.0.0.1:0"],
         "--advertise needs a routable HOST"),
        (["--public", "127.0.0.1:0", "--internal", "127.0.0.1:0", "--tcp-advertise",
          "127.0.0.1:443"], "--tcp-advertise needs --tcp"),
        (["--public", "127.0.0.1:0", "--internal", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
          "--tcp-advertise", "192.0.2.1:443"], "--tcp-advertise must name the advertised UDP"),
    ):
        result = subprocess.run(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5", *flags],
            env=project_env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_run_relay_bound_to_wildcard_advertises_and_forwards_both_ways(
    project_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """Bound to 0.0.0.0, the relay publishes its ``--advertise`` addresses (heartbeat and DB row)
    and forwards a caller's packet to the transceiver and the transceiver's frame back."""
    public, internal = _free_udp_port(), _free_udp_port()
    with _endpoints(redis_client) as (xcvr, client):
        client.settimeout(5)
        proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5",
             "--public", f"0.0.0.0:{public}", "--advertise", f"127.0.0.1:{public}",
             "--internal", f"0.0.0.0:{internal}",
             "--internal-advertise", f"127.0.0.1:{internal}", "--tcp", "0.0.0.0:0",
             "--tcp-advertise", "127.0.0.1:443"],
            env=project_env,
        )
        try:
            _establish(proc, xcvr, client, public, redis_client)
            beat = heartbeats.RelayHeartbeat.from_json(
                redis_client.get(keys.relay_heartbeat_key(5, 0)) or b""
            )
            assert (beat.public, beat.internal) == (f"127.0.0.1:{public}",
                                                    f"127.0.0.1:{internal}")
            xcvr.sendto(pack_header(client.getsockname()) + b"\x80reply",
                        ("127.0.0.1", internal))
            assert client.recv(65535) == b"\x80reply"
            row = subprocess.run(
                [sys.executable, str(MANAGE), "shell", "-c",
                 "from relays.models import RelayShard as R; r = R.objects.get(shard_id=5); "
                 "print(r.public_host, r.public_port, r.internal_host, r.internal_port, "
                 "r.tcp_port)"],
                env=project_env, capture_output=True, text=True, timeout=60, check=True,
            )
            assert row.stdout.split()[-5:] == ["127.0.0.1", str(public), "127.0.0.1",
                                               str(internal), "443"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def test_run_relay_bound_to_the_ipv6_wildcard_forwards_ipv6_callers_both_ways(
    project_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """Bound to ``[::]`` (an IPv6-only host's wildcard) and advertising ``[::1]``: the heartbeat
    names the IPv6 addresses, a caller's packet from ``::1`` reaches the transceiver framed
    with its IPv6 address, and the transceiver's frame back reaches the caller."""
    public, internal = _free_udp_port(), _free_udp_port()
    with _endpoints(redis_client, "::1") as (xcvr, client):
        client.settimeout(5)
        proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5",
             "--public", f"[::]:{public}", "--advertise", f"[::1]:{public}",
             "--internal", f"[::]:{internal}", "--internal-advertise", f"[::1]:{internal}"],
            env=project_env,
        )
        try:
            _establish(proc, xcvr, client, public, redis_client, host="::1")
            beat = heartbeats.RelayHeartbeat.from_json(
                redis_client.get(keys.relay_heartbeat_key(5, 0)) or b""
            )
            assert addresses.parse_addr(beat.public) == ("::1", public)
            assert addresses.parse_addr(beat.internal) == ("::1", internal)
            caller = client.getsockname()[:2]
            client.sendto(b"\x80hello", ("::1", public))  # RTP from the learned address
            xcvr.settimeout(5)
            assert parse_header(xcvr.recv(65535))[0] == caller
            xcvr.sendto(pack_header(caller) + b"\x80reply", ("::1", internal))
            assert client.recv(65535) == b"\x80reply"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
