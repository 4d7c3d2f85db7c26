"""Fleet operations on a real ``manage.py up``: drain and resume from the dashboard, a SIGKILLed
transceiver that ``up`` restarts at once (its sessions must not stay as ghosts).

One edge for the module: region ``pair`` (two transceivers) and region ``solo`` (one transceiver
of capacity 3). Offers pin their region with ``?region=``.
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import json
import logging
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.heartbeats import TransceiverHeartbeat
from fleet.keys import transceiver_heartbeat_key
from signaling_site.redis_server import start_embedded_redis
from tests.e2e.conftest import LOCAL, ROOT, Edge, start_edge, stop_edge
from whip.client import Call, get_json, http_request

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)

INTERVAL = 0.5  # HEALTH_PROBE_INTERVAL for this edge
WAIT = 30.0  # generous bound for anything eventual: the machine may be busy
STAFF_PASSWORD = "e2e-staff-pw"  # noqa: S105 (a throwaway account of a throwaway edge)


@pytest.fixture(scope="module")
def fleet_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    regions = [
        {"code": "pair", "name": "Pair", "latitude": 0.0, "longitude": 0.0, "default": True,
         "relays": [{"shard": 41}], "transceivers": [{"id": 41}, {"id": 42}]},
        {"code": "solo", "name": "Solo", "latitude": 10.0, "longitude": 10.0,
         "relays": [{"shard": 43}], "transceivers": [{"id": 43, "capacity": 3}]},
    ]
    edge = start_edge(
        tmp_path_factory.mktemp("fleet"), redis_dbs(), regions,
        # A restart here takes 1-4 s (8 probe intervals when the machine is busy); in production
        # it is often shorter than one interval, so no probe misses and no node goes down. Never
        # marking down here tests that case: only the new incarnation can fail the old sessions.
        extra_env={"HEALTH_PROBE_INTERVAL": str(INTERVAL), "RATE_LIMIT_PER_MINUTE": "1000",
                   "HEALTH_DOWN_AFTER": "1000"},
    )
    yield edge
    stop_edge(edge)


def manage(edge: Edge, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = edge.manage_env(**(env or {}))
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=full_env,
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


class StaffBrowser:
    """A staff user's browser session over HTTP: admin login, then the dashboard's forms."""

    def __init__(self, edge: Edge) -> None:
        self.base = edge.base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _token(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=15) as page:
            html = page.read().decode()
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert found, html[:500]
        return found.group(1)

    def post(self, path: str, fields: dict[str, str], token_from: str = "/dashboard/") -> str:
        form = {**fields, "csrfmiddlewaretoken": self._token(token_from)}
        data = urllib.parse.urlencode(form).encode()
        with self.opener.open(self.base + path, data=data, timeout=15) as page:  # follows 302
            return str(page.geturl())

    def login(self, username: str, password: str) -> None:
        landed = self.post("/admin/login/?next=/dashboard/",
                           {"username": username, "password": password, "next": "/dashboard/"},
                           token_from="/admin/login/")
        assert landed.endswith("/dashboard/"), landed


def staff_browser(edge: Edge) -> StaffBrowser:
    manage(edge, "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.org",
           env={"DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD})
    browser = StaffBrowser(edge)
    browser.login("ops", STAFF_PASSWORD)
    return browser


def node_state(edge: Edge, transceiver_id: int) -> str:
    for region in get_json(edge.base_url + "/v1/regions")["regions"]:  # type: ignore[union-attr]
        for xcvr in region["transceivers"]:
            if xcvr["id"] == transceiver_id:
                return str(xcvr["state"])
    raise KeyError(transceiver_id)


def offer(edge: Edge, region: str) -> tuple[int, dict[str, str], str]:
    """POST a fresh aiortc offer pinned to ``region`` (the session never connects)."""
    async def sdp() -> str:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        text = str(pc.localDescription.sdp)
        await pc.close()
        return text

    status, headers, body = http_request(
        "POST", f"{edge.base_url}/v1/sessions?region={region}", asyncio.run(sdp()).encode(),
        {"Content-Type": "application/sdp"},
    )
    return status, headers, body.decode()


def delete(edge: Edge, headers: dict[str, Any]) -> None:
    http_request("DELETE", edge.base_url + headers["Location"], b"", {})


async def test_dashboard_drain_steers_offers_away_and_resume_brings_them_back(
    fleet_edge: Edge,
) -> None:
    browser = await asyncio.to_thread(staff_browser, fleet_edge)
    call = Call(fleet_edge.base_url, seconds=30.0, region="pair")
    await call.start()  # a live call keeps the drained transceiver from exiting
    placed: list[dict[str, str]] = []
    try:
        await call.wait_connected()
        drained = int(call.response_headers["X-Transceiver"])
        other = ({41, 42} - {drained}).pop()
        path = f"/dashboard/nodes/transceiver/{drained}/drain"
        await asyncio.to_thread(browser.post, path, {"drain": "1"})
        assert node_state(fleet_edge, drained) == "draining"
        for _ in range(3):
            status, headers, body = await asyncio.to_thread(offer, fleet_edge, "pair")
            assert status == 201, body
            assert int(headers["X-Transceiver"]) == other
            delete(fleet_edge, headers)
        await asyncio.to_thread(browser.post, path, {"drain": "0"})
        await asyncio.sleep(4 * INTERVAL)  # several probes: none may put it back to draining
        assert node_state(fleet_edge, drained) in ("unknown", "healthy")
        deadline = time.monotonic() + WAIT
        while not any(int(h["X-Transceiver"]) == drained for h in placed):
            assert time.monotonic() < deadline, placed  # kept open: loads even out
            status, headers, body = await asyncio.to_thread(offer, fleet_edge, "pair")
            assert status == 201, body  # the daemon answered: it takes sessions again
            placed.append(headers)
        assert node_state(fleet_edge, drained) == "healthy"
    finally:
        for headers in placed:
            delete(fleet_edge, headers)
        await call.stop()


class SessionSocket:
    """A minimal RFC 6455 client for ``/ws/sessions/<id>``: handshake, then read text frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, edge: Edge, session_id: str) -> SessionSocket:
        host, port = urllib.parse.urlsplit(edge.base_url).netloc.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        writer.write((f"GET /ws/sessions/{session_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        status = await reader.readline()
        assert b" 101 " in status, status
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return cls(reader, writer)

    async def receive(self) -> dict[str, Any]:
        """The next text message as JSON (RFC 6455 section 5.2; server frames are unmasked)."""
        head = await self.reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await self.reader.readexactly(size)
        assert head[0] & 0x0F == 1, head  # a text frame
        return dict(json.loads(payload))

    def close(self) -> None:
        self.writer.close()


def heartbeat(edge: Edge, transceiver_id: int) -> TransceiverHeartbeat | None:
    raw = redis.Redis.from_url(edge.redis_url).get(transceiver_heartbeat_key(transceiver_id))
    return None if raw is None else TransceiverHeartbeat.from_json(raw)


async def test_sigkilled_transceiver_leaves_no_ghost_sessions(fleet_edge: Edge) -> None:
    """Capacity 3, three calls, kill -9: up restarts it in about a second, so no probe misses;
    the new incarnation must fail the dead one's sessions, and offers succeed again."""
    calls = [Call(fleet_edge.base_url, seconds=60.0, region="solo") for _ in range(3)]
    socket_ = None
    try:
        for call in calls:  # one at a time: at most half the capacity may be unconnected
            await call.start()
            assert call.response_headers["X-Transceiver"] == "43"
            await call.wait_connected()
        status, _, body = await asyncio.to_thread(offer, fleet_edge, "solo")
        assert status == 503 and "no_capacity" in body, body  # full: three live sessions
        ids = [call.location.rsplit("/", 1)[1] for call in calls]
        socket_ = await SessionSocket.open(fleet_edge, ids[0])
        assert (await socket_.receive())["state"] == "connected"
        before = heartbeat(fleet_edge, 43)
        assert before is not None and before.incarnation
        os.kill(fleet_edge.children()["transceiver-43"], signal.SIGKILL)
        killed = time.monotonic()
        restarted: float | None = None
        while True:
            now = time.monotonic()
            assert now - killed < WAIT, fleet_edge.output()[-3000:]
            beat = heartbeat(fleet_edge, 43)
            if restarted is None and beat and beat.incarnation != before.incarnation:
                restarted = now - killed
            status, headers, body = await asyncio.to_thread(offer, fleet_edge, "solo")
            if status == 201:
                took = time.monotonic() - killed
                delete(fleet_edge, headers)
                break
            assert status == 503, body
            await asyncio.sleep(0.05)
        assert restarted is not None
        logger.info("kill -9 -> new incarnation's heartbeat %.2f s, -> offer 201 %.2f s "
                    "(probe interval %.1f s)", restarted, took, INTERVAL)
        assert took <= restarted + 2 * INTERVAL + 1.5, (restarted, took)  # 1.5 s: Celery, load
        for session_id in ids:
            state = get_json(f"{fleet_edge.base_url}/v1/sessions/{session_id}")
            assert (state["state"], state["reason"]) == ("failed", "transceiver restarted"), state
        event = await asyncio.wait_for(socket_.receive(), 5)
        assert (event["state"], event["detail"]) == ("failed", "transceiver restarted"), event
    finally:
        if socket_ is not None:
            socket_.close()
        for call in calls:
            await call.stop()


def echo_recovered_at(arrivals: list[float], since: float, gap: float = 0.2) -> float:
    """When RTP last resumed after a gap longer than ``gap`` s that ended after ``since``
    (``since`` itself when there was none)."""
    resumed = since
    for before, after in zip(arrivals, arrivals[1:], strict=False):
        if after > since and after - before > gap:
            resumed = after
    return resumed


async def test_redis_restarted_empty_heals_without_restarting_a_process(tmp_path: Path) -> None:
    """SIGKILL the edge's own redis-server and start it EMPTY on the same port: the daemons
    re-assert what they own, so the live call's echo resumes and a new call connects."""
    redis_proc, url = start_embedded_redis(tmp_path / "redis-before")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    edge = start_edge(tmp_path, url, json.loads(json.dumps(LOCAL)),
                      extra_env={"HEALTH_PROBE_INTERVAL": str(INTERVAL)})
    call = Call(edge.base_url, seconds=30.0)
    try:
        await call.start()
        await call.wait_connected()
        await asyncio.sleep(1.0)
        children = edge.children()
        assert len(call.received.rtp_times) > 20  # echo flowing
        redis_proc.kill()
        redis_proc.wait(10)
        killed = time.monotonic()
        redis_proc, _ = start_embedded_redis(tmp_path / "redis-after", port=port)  # empty
        restarted = time.monotonic()
        await asyncio.sleep(5.0)
        arrivals = list(call.received.rtp_times)
        recovered = echo_recovered_at(arrivals, killed) - restarted
        logger.info("redis down %.2f s; echo back %.2f s after the empty redis started "
                    "(last RTP %.2f s ago)", restarted - killed, max(0.0, recovered),
                    time.monotonic() - arrivals[-1])
        assert recovered <= 3.0, recovered
        assert time.monotonic() - arrivals[-1] < 0.5  # and it keeps flowing
        second = Call(edge.base_url, seconds=2.0)
        await second.start()
        try:
            await second.wait_connected()
            await second.play()
            assert second.echo_ratio() >= 0.8, second.echo_ratio()
        finally:
            await second.stop()
        assert edge.children() == children  # no process was restarted
        assert "; restarting" not in edge.output()  # the supervisor's restart line
    finally:
        await call.stop()
        stop_edge(edge)
        redis_proc.kill()
        redis_proc.wait(10)
