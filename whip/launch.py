"""Start and stop a whole local edge (``manage.py up``) on free ports, as the end-to-end tests and
the benchmarks do: one subprocess, its output collected, ``READY`` awaited."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]  # the checkout: manage.py lives here
READY_TIMEOUT = 120.0
_DATABASES = count(1)


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
            relay.setdefault("tcp_port", free_port(socket.SOCK_STREAM))  # ICE-TCP, as up does
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
    env: dict[str, str] = field(default_factory=dict)  # what its children run with

    def manage_env(self, **extra: str) -> dict[str, str]:
        """The environment to run ``manage.py`` against this edge (its var dir, Redis and
        database)."""
        return {**os.environ, **{k: v for k, v in self.env.items()
                                 if k in ("EDGE_VAR_DIR", "REDIS_URL", "DATABASE_URL")}, **extra}

    def children(self) -> dict[str, int]:
        state = json.loads((self.var_dir / "run" / "up.json").read_text())
        return {name: int(pid) for name, pid in state["children"].items()}

    def relay_public(self, shard: int) -> tuple[str, int]:
        for region in self.topology["regions"]:
            for relay in region["relays"]:
                if relay["shard"] == shard:
                    return "127.0.0.1", relay["public_port"]
        raise KeyError(shard)

    def relay_tcp(self, shard: int) -> tuple[str, int]:
        for region in self.topology["regions"]:
            for relay in region["relays"]:
                if relay["shard"] == shard and relay.get("tcp_port"):
                    return "127.0.0.1", relay["tcp_port"]
        raise KeyError(shard)

    def output(self) -> str:
        return "\n".join(self.lines)


def _admin_url(url: str) -> str:
    """The ``postgres`` maintenance database on ``url``'s server."""
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def fresh_postgres_database(url: str) -> str:
    """Create an empty database beside the one ``url`` names and return its URL, so each edge
    (and the unit tests' own test database) has a database of its own on a shared server."""
    import psycopg  # only when the edge runs on PostgreSQL

    name = f"edge_{os.getpid()}_{next(_DATABASES)}"
    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def drop_fresh_databases(url: str) -> int:
    """Drop every database ``fresh_postgres_database`` made in this process on ``url``'s server
    (connections closed with them); how many it dropped."""
    import psycopg

    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [f"edge\\_{os.getpid()}\\_%"])]
        _drop(conn, names)
    return len(names)


def _drop(conn: Any, names: list[str]) -> None:
    """Drop databases ``names`` over maintenance connection ``conn`` (their connections too)."""
    for name in names:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_edge(tmp: Path, redis_url: str, regions: list[dict[str, Any]],
               extra_env: dict[str, str] | None = None,
               extra_args: list[str] | None = None) -> Edge:
    """Run ``manage.py up`` for ``regions`` under ``tmp`` (var dir, topology, up.log) against
    ``redis_url``; return once it prints ``READY`` (``RuntimeError`` if it dies or times out)."""
    topology = make_topology(regions)
    (tmp / "topology.json").write_text(json.dumps(topology))
    http = free_port(socket.SOCK_STREAM)
    env = {**os.environ, "EDGE_VAR_DIR": str(tmp / "var"), "REDIS_URL": redis_url,
           "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO", **(extra_env or {})}
    if env.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        env["DATABASE_URL"] = fresh_postgres_database(env["DATABASE_URL"])
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
    return Edge(f"http://127.0.0.1:{http}", topology, tmp / "var", redis_url, proc, lines, env)


def stop_edge(edge: Edge) -> int:
    """SIGINT (every child stops) and wait for the exit code; then drop the database
    ``fresh_postgres_database`` made for the edge, if it has one (benchmarks and scripts leave
    none behind; the test suite also drops them all at its end)."""
    edge.proc.send_signal(signal.SIGINT)
    try:
        code = edge.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        edge.proc.kill()
        raise
    _drop_own_database(edge.env.get("DATABASE_URL", ""))
    return code


def _drop_own_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    if url.startswith(("postgres://", "postgresql://")) \
            and name.startswith(f"edge_{os.getpid()}_"):
        import psycopg

        with psycopg.connect(_admin_url(url), autocommit=True) as conn:
            _drop(conn, [name])
