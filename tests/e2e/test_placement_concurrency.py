"""Three signaling replicas on one PostgreSQL + Redis place 200 concurrent offers on two
transceivers of capacity 50: none ever holds more than 50, every refusal is a clean 503."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy

import psutil
import pytest

from tests.e2e.conftest import LOCAL, ROOT, Edge, free_port, start_edge, stop_edge
from whip.client import http_request

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)

POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CAPACITY = 50
OFFERS = 200
REPLICAS = 3  # up's own signaling plus two more daphne processes
DISTINCT_OFFERS = 10  # real aiortc offers, made once and reused
# Each request in flight holds a PostgreSQL connection (a thread each): 60 at once exhausted
# max_connections (100) beside the other edges on this server, and answered 503 unavailable.
CONCURRENCY = 24


def _postgres_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


async def _offers() -> list[str]:
    from tests.calls.live_fleet import browser_offer

    return [await browser_offer() for _ in range(DISTINCT_OFFERS)]


@pytest.fixture(scope="module")
def pg_edge(tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
            ) -> Iterator[Edge]:
    if not _postgres_answers():
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    regions = deepcopy(LOCAL)
    regions[0]["transceivers"] = [{"id": 1, "capacity": CAPACITY}, {"id": 2, "capacity": CAPACITY}]
    running = start_edge(
        tmp_path_factory.mktemp("placement"), redis_dbs(), regions,
        extra_env={"DATABASE_URL": POSTGRES, "RATE_LIMIT_BURST": "10000",
                   "RATE_LIMIT_PER_MINUTE": "100000", "MAX_PENDING_PER_CLIENT": "10000",
                   "TRANSCEIVER_PENDING_SHARE": "1.0", "SESSION_CONNECT_TIMEOUT": "300",
                   # the row-lock test's transceiver has no daemon: health marks it down, and
                   # must not fail its sessions as lost (freeing capacity) while the test counts
                   "HEALTH_SESSION_LOST_AFTER": "3600"},
    )
    yield running
    stop_edge(running)


@contextlib.contextmanager
def _replicas(edge: Edge, count: int) -> Iterator[list[str]]:
    """``count`` more daphne processes with the edge's own environment (its fresh database)."""
    env = psutil.Process(edge.children()["signaling"]).environ()
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port(socket.SOCK_STREAM)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "signaling_site.http_server", "-b", "127.0.0.1",
                 "-p", str(port), "signaling_site.asgi:application"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            _wait_http(url)
        yield urls
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            status, _, _ = http_request("GET", f"{url}/healthz", b"", {}, timeout=2)
            if status in (200, 503):
                return
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(0.3)


def _post(url: str, sdp: str) -> tuple[int, str, str]:
    """``(status, X-Transceiver, problem code)`` of one offer."""
    status, headers, body = http_request(
        "POST", f"{url}/v1/sessions", sdp.encode(),
        {"Content-Type": "application/sdp"}, timeout=60,
    )
    code = json.loads(body).get("code", "") if status != 201 else ""
    return status, headers.get("X-Transceiver", ""), str(code)


def _live_per_transceiver(edge: Edge) -> dict[int, int]:
    import psycopg

    env = psutil.Process(edge.children()["signaling"]).environ()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT t.transceiver_id, count(*) FROM calls_session s "
            "JOIN transceivers_transceiver t ON t.id = s.transceiver_id "
            "WHERE s.state IN ('new', 'answered', 'connected') GROUP BY t.transceiver_id"
        ).fetchall()
    return {int(tid): int(n) for tid, n in rows}


def test_concurrent_offers_through_three_replicas_never_overfill(pg_edge: Edge) -> None:
    offers = asyncio.run(_offers())
    with _replicas(pg_edge, REPLICAS - 1) as urls:
        targets = [pg_edge.base_url, *urls]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            results = list(pool.map(
                lambda i: _post(targets[i % REPLICAS], offers[i % DISTINCT_OFFERS]),
                range(OFFERS),
            ))
        elapsed = time.monotonic() - started
    statuses = collections.Counter(status for status, _, _ in results)
    placed = collections.Counter(xcvr for status, xcvr, _ in results if status == 201)
    refusals = collections.Counter(code for status, _, code in results if status != 201)
    live = _live_per_transceiver(pg_edge)
    logger.warning("placement: %s in %.1fs; 201s per transceiver %s; refusals %s; live in DB %s",
                   dict(statuses), elapsed, dict(placed), dict(refusals), live)
    assert set(statuses) <= {201, 503}, statuses
    assert set(refusals) <= {"no_capacity"}, refusals
    assert max(placed.values()) <= CAPACITY, placed
    assert max(live.values()) <= CAPACITY, live
    assert statuses[201] >= CAPACITY, statuses  # both transceivers answered most offers


# Run in each of 3 processes: 4 threads x 10 placements on a fresh transceiver row of capacity 50
# that no daemon serves (so only the database can refuse); prints how many rows it created.
_CREATE = """
import threading
from calls.placement import Placement
from calls.services import session_create_within_capacity
from relays.models import RelayShard
from transceivers.models import Transceiver
from django.db import connection
row = Transceiver.objects.get(transceiver_id=9)
placement = Placement(row.region, "nearest", RelayShard.objects.get(shard_id=1), row)
created = []
def place():
    for _ in range(10):
        created.append(session_create_within_capacity(placement=placement, client_ip=None))
    connection.close()
threads = [threading.Thread(target=place) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("CREATED", sum(c is not None for c in created))
"""


def test_row_lock_keeps_concurrent_creators_within_capacity(pg_edge: Edge) -> None:
    """120 placements from 3 processes x 4 threads on one row of capacity 50: exactly 50 rows."""
    env = psutil.Process(pg_edge.children()["signaling"]).environ()
    manage = [sys.executable, str(ROOT / "manage.py"), "shell", "-c"]
    subprocess.run([*manage, "from transceivers.services import transceiver_register; "
                    "transceiver_register(transceiver_id=9, region_code='local', "
                    f"bind_host='127.0.0.1', bind_port=9, capacity={CAPACITY})"],
                   env=env, check=True, timeout=60)
    procs = [subprocess.Popen([*manage, _CREATE], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    created = [int(line.split()[1]) for out in outputs for line in out.splitlines()
               if line.startswith("CREATED ")]
    assert len(created) == 3, outputs
    assert sum(created) == CAPACITY, created
    assert _live_per_transceiver(pg_edge)[9] == CAPACITY
