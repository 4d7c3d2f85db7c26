"""Authentication on a real ``manage.py up`` with ``AUTH_REQUIRED=1``: API keys made with
``manage.py apikey``, a client secret's call through the relay outliving the secret, revocation
seen at once by the running signaling process, ``manage.py call --token``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import LOCAL, ROOT, Edge, start_edge, stop_edge
from whip.client import Call, WhipError, get_json, http_request, mint_client_secret

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def auth_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    edge = start_edge(tmp_path_factory.mktemp("auth-edge"), redis_dbs(),
                      json.loads(json.dumps(LOCAL)),
                      extra_env={"AUTH_REQUIRED": "1", "DEMO_OPEN": "0"})
    yield edge
    stop_edge(edge)


def _manage(edge: Edge, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT,
                          env=edge.manage_env(), text=True, capture_output=True, timeout=120,
                          check=check)


def _new_key(edge: Edge, name: str) -> str:
    return _manage(edge, "apikey", "create", name).stdout.splitlines()[-1]


def test_up_says_authentication_is_on(auth_edge: Edge) -> None:
    assert any(line.startswith("[up] API authentication is ON") for line in auth_edge.lines)


def test_no_token_is_401_and_the_demo_endpoint_is_absent(auth_edge: Edge) -> None:
    status, headers, body = http_request("POST", auth_edge.base_url + "/v1/sessions", b"v=0",
                                         {"Content-Type": "application/sdp"})
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="voice-edge"'
    assert json.loads(body)["code"] == "unauthorized"
    status, _, _ = http_request("POST", auth_edge.base_url + "/demo/client_secret", b"", {})
    assert status == 404


async def test_a_live_call_outlives_its_client_secret(auth_edge: Edge) -> None:
    key = await asyncio.to_thread(_new_key, auth_edge, "call-server")
    minted = await asyncio.to_thread(mint_client_secret, auth_edge.base_url, key, 10)
    secret = str(minted["value"])
    call = Call(auth_edge.base_url, seconds=16.0, token=secret)
    await call.start()
    try:
        await call.wait_connected()
        # expires_at is whole seconds (the stored instant is at most 1 s later)
        await asyncio.sleep(max(0.0, float(minted["expires_at"]) + 1.2 - time.time()))
        expired_at = time.monotonic()
        late = Call(auth_edge.base_url, seconds=1.0, token=secret)
        with pytest.raises(WhipError) as refused:
            await late.start()
        await late.stop()
        assert refused.value.status == 401 and "client secret expired" in refused.value.body
        await call.play()
        after = sum(ok for t, ok in zip(call.received.times, call.received.tone, strict=True)
                    if t > expired_at)
        assert after >= 100, f"{after} tone frames echoed after the secret expired"
        assert call.echo_ratio() >= 0.9, call.echo_ratio()
        where = call.location
        state = await asyncio.to_thread(get_json, where, secret)  # its own call
        assert state["state"] == "connected"
        status, _, _ = await asyncio.to_thread(http_request, "DELETE", where, b"",
                                               {"Authorization": f"Bearer {secret}"})
        assert status == 200
        call.location = ""
    finally:
        await call.stop()
    assert (await asyncio.to_thread(get_json, where, key))["state"] == "ended"  # via its key


def test_a_revoked_key_stops_at_once_in_the_running_edge(auth_edge: Edge) -> None:
    key = _new_key(auth_edge, "to-revoke")
    url, body = auth_edge.base_url + "/v1/client_secrets", b""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    assert http_request("POST", url, body, headers)[0] == 200
    assert "revoked API key to-revoke" in _manage(auth_edge, "apikey", "revoke", "to-revoke").stdout
    status, answer, _ = http_request("POST", url, body, headers)
    assert status == 401 and 'error="invalid_token"' in answer["WWW-Authenticate"]


def test_manage_py_call_takes_a_token(auth_edge: Edge) -> None:
    key = _new_key(auth_edge, "smoke")
    refused = _manage(auth_edge, "call", auth_edge.base_url, "--seconds", "1", check=False)
    assert refused.returncode != 0 and "HTTP 401" in refused.stderr
    done = _manage(auth_edge, "call", auth_edge.base_url, "--seconds", "2", "--token", key,
                   check=False)
    assert done.returncode == 0, done.stderr
    assert "connected in" in done.stdout and "tone frames back" in done.stdout
