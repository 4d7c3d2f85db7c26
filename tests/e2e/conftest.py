"""Run the whole system with ``manage.py up`` (real Redis, relay, transceiver, Celery, daphne)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import with_db

ROOT = Path(__file__).resolve().parents[2]
E2E_REDIS_DBS = range(1, 15)  # db 15 is the unit tests'
READY_TIMEOUT = 120.0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def make_topology(regions: list[dict[str, Any]]) -> dict[str, Any]:
    """Fill in free ports for every relay and transceiver of ``regions``."""
    for region in regions:
        for relay in region["relays"]:
            relay.setdefault("public_port", free_port())
            relay.setdefault("internal_port", free_port())
        for xcvr in region["transceivers"]:
            xcvr.setdefault("port", free_port())
            xcvr.setdefault("capacity", 100)
    return {"regions": regions}


LOCAL = [{"code": "local", "name": "Local", "latitude": 0.0, "longitude": 0.0, "default": True,
          "relays": [{"shard": 1}], "transceivers": [{"id": 1}]}]


@dataclass
class Edge:
    """A running ``manage.py up``: its URL, topology, output and children."""

    base_url: str
    topology: dict[str, Any]
    var_dir: Path
    redis_url: str
    proc: subprocess.Popen[bytes]
    lines: list[str]

    def children(self) -> dict[str, int]:
        state = json.loads((self.var_dir / "run" / "up.json").read_text())
        return {name: int(pid) for name, pid in state["children"].items()}

    def relay_public(self, shard: int) -> tuple[str, int]:
        for region in self.topology["regions"]:
            for relay in region["relays"]:
                if relay["shard"] == shard:
                    return "127.0.0.1", relay["public_port"]
        raise KeyError(shard)

    def output(self) -> str:
        return "\n".join(self.lines)


def start_edge(tmp: Path, redis_url: str, regions: list[dict[str, Any]],
               extra_env: dict[str, str] | None = None,
               extra_args: list[str] | None = None) -> Edge:
    topology = make_topology(regions)
    (tmp / "topology.json").write_text(json.dumps(topology))
    http = free_port(socket.SOCK_STREAM)
    env = {**os.environ, "EDGE_VAR_DIR": str(tmp / "var"), "REDIS_URL": redis_url,
           "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO", **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "up", "--http", f"127.0.0.1:{http}",
         "--topology", str(tmp / "topology.json"), *(extra_args or [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with open(tmp / "up.log", "w") as log:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                if line.startswith("READY "):
                    ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("manage.py up did not get ready:\n" + "\n".join(lines[-60:]))
    return Edge(f"http://127.0.0.1:{http}", topology, tmp / "var", redis_url, proc, lines)


def stop_edge(edge: Edge) -> int:
    edge.proc.send_signal(signal.SIGINT)
    try:
        return edge.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        edge.proc.kill()
        raise


@pytest.fixture(scope="session")
def redis_dbs(redis_server: str) -> Callable[[], str]:
    """Hands out a fresh, flushed Redis db per running system, so two edges alive at once
    (the session's and a module's) never share a registry or heartbeats."""
    numbers = iter(E2E_REDIS_DBS)

    def next_url() -> str:
        url = with_db(redis_server, next(numbers))
        redis.Redis.from_url(url).flushdb()
        return url

    return next_url


@pytest.fixture(scope="session")
def e2e_redis_url(redis_dbs: Callable[[], str]) -> str:
    """The Redis db of the session's shared edge."""
    return redis_dbs()


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory, e2e_redis_url: str) -> Iterator[Edge]:
    """The whole system with one region, one relay shard, one transceiver."""
    regions = json.loads(json.dumps(LOCAL))
    running = start_edge(tmp_path_factory.mktemp("edge"), e2e_redis_url, regions)
    yield running
    stop_edge(running)
