"""``manage.py up`` itself: a READY line, the URLs, and a clean stop of every child."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from tests.e2e.conftest import LOCAL, ROOT, Edge, free_port, start_edge, stop_edge
from whip.client import Call

pytestmark = [pytest.mark.e2e]


def test_up_is_ready_then_stops_every_child(
    redis_dbs: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    regions = json.loads(json.dumps(LOCAL))
    regions[0]["code"] = "solo"
    edge = start_edge(tmp_path_factory.mktemp("up"), redis_dbs(), regions)
    ready = [line for line in edge.lines if line.startswith("READY ")]
    assert ready == [f"READY {edge.base_url}/ relays=solo:127.0.0.1:{edge.relay_public(1)[1]}"]
    deadline = time.monotonic() + 5  # the URL lines follow READY
    while not any("WHIP" in line and "/v1/sessions" in line for line in edge.lines):
        assert time.monotonic() < deadline, edge.output()
        time.sleep(0.05)
    children = edge.children()
    assert set(children) == {"relay-1", "transceiver-1", "signaling", "celery-worker",
                             "celery-beat"}
    descendants = [p.pid for pid in children.values() for p in
                   [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
    assert stop_edge(edge) == 0
    alive = [pid for pid in descendants if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive
    assert not (edge.var_dir / "run" / "up.json").exists()
    url = edge.env.get("DATABASE_URL", "")
    if url.startswith("postgres"):  # the PostgreSQL run: the edge's own database went with it
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres") as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                [name]).fetchone() is None, name


async def test_up_starts_an_embedded_redis_when_none_answers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A fresh laptop: nothing listens at REDIS_URL, so up brings its own redis-server."""
    dead = f"redis://127.0.0.1:{free_port(socket.SOCK_STREAM)}/0"
    regions = json.loads(json.dumps(LOCAL))
    edge = start_edge(tmp_path_factory.mktemp("embedded"), dead, regions)
    try:
        assert any(line.startswith("[up] embedded redis-server at redis://127.0.0.1:")
                   for line in edge.lines), edge.output()
        call = Call(edge.base_url, seconds=1.0)
        await call.start()
        try:
            await call.wait_connected()
            await call.play()
            assert call.echo_ratio() >= 0.9
        finally:
            await call.stop()
    finally:
        assert stop_edge(edge) == 0


def test_up_refuses_ports_already_in_use(edge: Edge) -> None:
    """A second `up` on the same ports stops at once instead of passing another's /healthz."""
    env = {**os.environ, "EDGE_VAR_DIR": str(edge.var_dir.parent / "second"),
           "REDIS_URL": edge.redis_url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "up", "--http", edge.base_url[len("http://"):],
         "--topology", str(edge.var_dir.parent / "topology.json")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "is in use" in result.stderr and "--http" in result.stderr, result.stderr


def test_var_files_are_private(edge: Edge) -> None:
    """The database and the secrets are readable by their owner only."""
    names = ["secrets.json"] + ([] if "DATABASE_URL" in edge.env else ["db.sqlite3"])
    for name in names:
        mode = (edge.var_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
