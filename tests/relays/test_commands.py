"""The relay's management commands: ``ufrag`` in-process, ``run_relay`` as a real process."""

from __future__ import annotations

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

from relays import registry
from relays.framing import parse_header
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
    project_env: dict[str, str], redis_client: redis.Redis
) -> None:
    public, internal = _free_udp_port(), _free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as xcvr, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        xcvr.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        xcvr.settimeout(0.2)
        redis_client.hset(registry.TRANSCEIVERS_KEY, "3",
                          registry.format_addr(xcvr.getsockname()))
        proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "run_relay", "--shard", "5", "--workers", "2",
             "--public", f"127.0.0.1:{public}", "--internal", f"127.0.0.1:{internal}"],
            env=project_env,
        )
        try:
            deadline = time.monotonic() + 30
            keys = [registry.relay_heartbeat_key(5, worker) for worker in (0, 1)]
            while redis_client.exists(*keys) < 2:
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
