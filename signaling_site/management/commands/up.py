"""``python manage.py up``: the whole edge on one machine, supervised, until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import urllib.request
from argparse import ArgumentParser
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from geo.services import region_upsert
from geo.topology import Topology, parse_topology
from relays.registry import addr_argument, relay_heartbeat_key, transceiver_heartbeat_key
from signaling_site.env import child_environment
from signaling_site.redis_client import get_redis
from signaling_site.redis_server import ensure_redis
from signaling_site.supervisor import ChildSpec, Supervisor
from signaling_site.tasks import CELERY_HEARTBEAT_KEY

READY_TIMEOUT = 90.0
DEFAULT_TOPOLOGY = Path(settings.BASE_DIR) / "topologies" / "local.json"


class Stop(Exception):
    """Raised from the signal handler to leave the supervision loop."""


def _check_ports_free(topology: Topology, http_host: str, http_port: int, public: str) -> None:
    """Fail before starting anything if a port is taken: another server answering on it would
    otherwise pass for ours (a stale signaling process still answers /healthz)."""
    wanted = [(socket.SOCK_STREAM, http_host, http_port, "--http")]
    for region in topology.regions:
        for relay in region.relays:
            wanted.append((socket.SOCK_DGRAM, public, relay.public_port, f"relay {relay.shard}"))
            wanted.append((socket.SOCK_DGRAM, "127.0.0.1", relay.internal_port,
                           f"relay {relay.shard} internal"))
        for xcvr in region.transceivers:
            wanted.append((socket.SOCK_DGRAM, "127.0.0.1", xcvr.port, f"transceiver {xcvr.id}"))
    for kind, host, port, what in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CommandError(f"{what}: {host}:{port} is in use ({exc.strerror}); "
                                   "is another `manage.py up` running?") from None


class Command(BaseCommand):
    help = "Start Redis (if needed), signaling, relays, transceivers, Celery worker and beat."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--http", type=addr_argument, default="127.0.0.1:8000", help="signaling HOST:PORT"
        )
        parser.add_argument(
            "--public-host", default="127.0.0.1", help="relay address advertised in answers"
        )
        parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
        parser.add_argument("--relay-workers", type=int, default=1)
        parser.add_argument(
            "--no-restart", action="append", default=[], metavar="NAME",
            help="child (e.g. transceiver-2) left down when it dies (health tests)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        http_host, http_port = options["http"]
        topology = self._load_topology(options["topology"])
        _check_ports_free(topology, http_host, http_port, options["public_host"])
        var = Path(settings.VAR_DIR)
        (var / "run").mkdir(parents=True, exist_ok=True)
        redis_proc, redis_url = ensure_redis(settings.REDIS_URL, var / "redis")
        settings.REDIS_URL = redis_url
        env = self._child_env(redis_url)
        sup = Supervisor(
            env=env, write=lambda line: self.stdout.write(line), state_file=var / "run" / "up.json"
        )
        if redis_proc is not None:
            self.stdout.write(f"[up] embedded redis-server at {redis_url}")
        call_command("migrate", interactive=False, verbosity=0)
        self._register(topology)
        self._install_signals()
        try:
            self._start(sup, topology, http_host, http_port, options)
            self._wait_ready(sup, topology, http_host, http_port)
            self._announce(topology, http_host, http_port, options["public_host"])
            while True:
                sup.poll()
                if sup.exited():
                    raise CommandError(f"{', '.join(sup.exited())} exited")
                time.sleep(0.2)
        except (Stop, KeyboardInterrupt):
            self.stdout.write("[up] stopping")
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the stop
                signal.signal(signum, signal.SIG_IGN)
            sup.stop(order=["celery-beat", "signaling"])
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
            self.stdout.write("[up] stopped")

    def _load_topology(self, path: Path) -> Topology:
        try:
            return parse_topology(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise CommandError(f"topology {path}: {exc}") from exc

    def _child_env(self, redis_url: str) -> dict[str, str]:
        return child_environment(
            REDIS_URL=redis_url, EDGE_VAR_DIR=str(settings.VAR_DIR), PYTHONUNBUFFERED="1"
        )

    def _register(self, topology: Topology) -> None:
        for region in topology.regions:
            region_upsert(
                code=region.code,
                name=region.name,
                latitude=region.latitude,
                longitude=region.longitude,
                is_default=region.is_default,
            )

    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise Stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _start(
        self, sup: Supervisor, topology: Topology, host: str, port: int, options: dict[str, Any]
    ) -> None:
        manage = (sys.executable, str(Path(settings.BASE_DIR) / "manage.py"))
        public = options["public_host"]
        keep_down = set(options["no_restart"])

        def node(name: str, argv: tuple[str, ...], stop: int = signal.SIGTERM) -> ChildSpec:
            # A drained node exits 0 and stays down; SIGINT stops a transceiver now (SIGTERM
            # would drain it).
            return ChildSpec(name, argv, restart=name not in keep_down,
                             required=name not in keep_down, drainable=True, stop_signal=stop)

        for region in topology.regions:
            for relay in region.relays:
                sup.add(node(f"relay-{relay.shard}", (*manage, "run_relay",
                    "--shard", str(relay.shard), "--region", region.code,
                    "--public", f"{public}:{relay.public_port}",
                    "--internal", f"127.0.0.1:{relay.internal_port}",
                    "--workers", str(options["relay_workers"]))))
            for xcvr in region.transceivers:
                sup.add(node(f"transceiver-{xcvr.id}", (*manage, "run_transceiver",
                    "--id", str(xcvr.id), "--region", region.code,
                    "--bind", f"127.0.0.1:{xcvr.port}", "--capacity", str(xcvr.capacity)),
                    stop=signal.SIGINT))
        access_log = Path(settings.VAR_DIR) / "run" / "access.log"
        sup.add(ChildSpec("signaling", (sys.executable, "-m", "daphne", "-b", host, "-p",
                                        str(port), "--access-log", str(access_log),
                                        "signaling_site.asgi:application")))
        celery = (sys.executable, "-m", "celery", "-A", "signaling_site")
        sup.add(ChildSpec("celery-worker", (*celery, "worker", "--loglevel", "INFO",
                                            "--concurrency", "2", "--hostname", "edge@%h")))
        schedule = Path(settings.VAR_DIR) / "run" / "celerybeat-schedule"
        sup.add(ChildSpec("celery-beat", (*celery, "beat", "--loglevel", "INFO",
                                          "--schedule", str(schedule))))

    def _wait_ready(self, sup: Supervisor, topology: Topology, host: str, port: int) -> None:
        """Block until every component answers: HTTP, heartbeats in Redis, a Celery round trip."""
        started = time.time()
        deadline = time.monotonic() + READY_TIMEOUT
        pending: list[str] = []
        while time.monotonic() < deadline:
            sup.poll()
            pending = self._pending(topology, host, port, started)
            if not pending:
                return
            time.sleep(0.2)
        raise CommandError(f"not ready after {READY_TIMEOUT:.0f}s: waiting for {pending}")

    def _pending(self, topology: Topology, host: str, port: int, started: float) -> list[str]:
        redis = get_redis()
        pending = []
        for region in topology.regions:
            for relay in region.relays:
                if not redis.exists(relay_heartbeat_key(relay.shard, 0)):
                    pending.append(f"relay-{relay.shard}")
            for xcvr in region.transceivers:
                if not redis.exists(transceiver_heartbeat_key(xcvr.id)):
                    pending.append(f"transceiver-{xcvr.id}")
        beat = redis.get(CELERY_HEARTBEAT_KEY)
        if beat is None or float(beat) < started:
            pending.append("celery")
        try:
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
                if response.status != 200:
                    pending.append("signaling")
        except OSError:
            pending.append("signaling")
        return pending

    def _announce(self, topology: Topology, host: str, port: int, public: str) -> None:
        base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        relays = ", ".join(
            f"{r.code}:{public}:{relay.public_port}" for r in topology.regions for relay in r.relays
        )
        self.stdout.write(f"READY {base}/ relays={relays}")
        self.stdout.write(f"  demo       {base}/")
        self.stdout.write(f"  WHIP       POST {base}/v1/sessions")
        self.stdout.write(f"  dashboard  {base}/dashboard/")
        self.stdout.write(f"  admin      {base}/admin/")
