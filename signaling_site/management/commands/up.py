"""``python manage.py up``: the whole edge on one machine, supervised, until SIGINT/SIGTERM."""

from __future__ import annotations

import ipaddress
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

from fleet.addresses import addr_argument, format_addr
from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat
from fleet.keys import CELERY_HEARTBEAT_KEY, relay_heartbeat_key, transceiver_heartbeat_key
from fleet.redis_client import shared_redis
from geo.services import region_upsert
from geo.topology import Topology, parse_topology
from signaling_site.env import child_environment, env_str
from signaling_site.redis_server import ensure_redis
from signaling_site.secrets import NAMES, ensure_local_secrets, make_private
from signaling_site.supervisor import ChildSpec, Supervisor, leftovers, stop_leftovers

READY_TIMEOUT = 90.0
DEFAULT_TOPOLOGY = Path(settings.BASE_DIR) / "topologies" / "local.json"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def local_access_defaults() -> dict[str, str]:
    """Local development: the API without authentication and the open demo on, unless the
    operator set ``AUTH_REQUIRED`` / ``DEMO_OPEN`` themselves."""
    defaults = {"AUTH_REQUIRED": "0", "DEMO_OPEN": "1"}
    return {name: value for name, value in defaults.items() if not env_str(name, "")}


def access_line(env: dict[str, str]) -> str:
    """One line on what the API asks of callers under this ``up``."""
    demo = "on" if env.get("DEMO_OPEN", "").lower() in ("1", "true", "yes", "on") else "off"
    if env.get("AUTH_REQUIRED", "").lower() in ("1", "true", "yes", "on"):
        return (f"[up] API authentication is ON (Bearer API key or client secret; "
                f"`manage.py apikey create NAME`); open demo {demo}")
    return (f"[up] API authentication is OFF (local development): set AUTH_REQUIRED=1 to require "
            f"API keys (`manage.py apikey create NAME`); open demo {demo}")


class Stop(Exception):
    """Raised from the signal handler to leave the supervision loop."""


def _check_ports_free(topology: Topology, http_host: str, http_port: int, public: str) -> None:
    """Fail before starting anything if a port is taken: another server answering on it would
    otherwise pass for ours (a stale signaling process still answers /healthz)."""
    wanted = [(socket.SOCK_STREAM, http_host, http_port, "--http")]
    for region in topology.regions:
        for relay in region.relays:
            wanted.append((socket.SOCK_DGRAM, public, relay.public_port, f"relay {relay.shard}"))
            if relay.tcp_port is not None:
                wanted.append((socket.SOCK_STREAM, public, relay.tcp_port,
                               f"relay {relay.shard} tcp"))
            wanted.append((socket.SOCK_DGRAM, "127.0.0.1", relay.internal_port,
                           f"relay {relay.shard} internal"))
            if relay.admin_port:
                wanted.append((socket.SOCK_STREAM, "127.0.0.1", relay.admin_port,
                               f"relay {relay.shard} admin"))
        for xcvr in region.transceivers:
            wanted.append((socket.SOCK_DGRAM, "127.0.0.1", xcvr.port, f"transceiver {xcvr.id}"))
            if xcvr.admin_port:
                wanted.append((socket.SOCK_STREAM, "127.0.0.1", xcvr.admin_port,
                               f"transceiver {xcvr.id} admin"))
    for kind, host, port, what in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:  # as daphne binds: TIME_WAIT is not "in use"
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CommandError(
                    f"{what}: {format_addr((host, port))} is in use ({exc.strerror}); "
                    "is another `manage.py up` running?"
                ) from None


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
        var = Path(settings.VAR_DIR)
        self._clear_leftovers(var / "run" / "up.json")
        _check_ports_free(topology, http_host, http_port, options["public_host"])
        make_private(var)  # before the database, the secrets and the logs are created
        (var / "run").mkdir(parents=True, exist_ok=True)
        redis_proc, redis_url = ensure_redis(settings.REDIS_URL, var / "redis")
        settings.REDIS_URL = redis_url
        env = self._child_env(redis_url, var, loopback=_is_loopback(http_host))
        sup = Supervisor(
            env=env, write=lambda line: self.stdout.write(line), state_file=var / "run" / "up.json"
        )
        if redis_proc is not None:
            self.stdout.write(f"[up] embedded redis-server at {redis_url}")
        self.stdout.write(access_line(env))
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

    def _clear_leftovers(self, state_file: Path) -> None:
        """Refuse when another ``up`` runs on this var dir; stop children an earlier one left."""
        found = leftovers(state_file)
        if found.up_pid is not None:
            raise CommandError(f"another `manage.py up` (pid {found.up_pid}) runs with "
                               f"{state_file.parent.parent}; stop it first")
        if found.children:
            names = ", ".join(f"{name} (pid {pid})" for name, pid in found.children.items())
            self.stdout.write(f"[up] {names} left by a previous `manage.py up`: stopping them")
            stop_leftovers(found.children)

    def _load_topology(self, path: Path) -> Topology:
        try:
            return parse_topology(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise CommandError(f"topology {path}: {exc}") from exc

    def _child_env(self, redis_url: str, var: Path, *, loopback: bool) -> dict[str, str]:
        """Children share Redis, the var dir and the secrets: those not set in the environment
        come from ``var/secrets.json``, created on the first run. Signaling on a loopback
        address is plain HTTP: its cookies cannot be Secure there."""
        unset = [name for name in NAMES if not env_str(name, "")]
        local = ensure_local_secrets(var) if unset else {}
        plain_http = loopback and not env_str("SECURE_COOKIES", "")
        cookies = {"SECURE_COOKIES": "0"} if plain_http else {}
        return child_environment(
            REDIS_URL=redis_url, EDGE_VAR_DIR=str(var), PYTHONUNBUFFERED="1",
            **{name: local[name] for name in unset}, **cookies, **local_access_defaults(),
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
                    "--public", format_addr((public, relay.public_port)),
                    "--internal", format_addr(("127.0.0.1", relay.internal_port)),
                    "--admin", format_addr(("127.0.0.1", relay.admin_port)),
                    *(("--tcp", format_addr((public, relay.tcp_port)))
                      if relay.tcp_port is not None else ()),
                    "--workers", str(options["relay_workers"]))))
            for xcvr in region.transceivers:
                sup.add(node(f"transceiver-{xcvr.id}", (*manage, "run_transceiver",
                    "--id", str(xcvr.id), "--region", region.code,
                    "--bind", format_addr(("127.0.0.1", xcvr.port)),
                    "--capacity", str(xcvr.capacity),
                    "--admin", format_addr(("127.0.0.1", xcvr.admin_port))),
                    stop=signal.SIGINT))
        access_log = Path(settings.VAR_DIR) / "run" / "access.log"
        # daphne with body/header/connection limits (signaling_site.http_server); -t: a view
        # that has not answered in 30 s is cut off; WebSocket handshakes must finish in 5 s.
        sup.add(ChildSpec("signaling", (sys.executable, "-m", "signaling_site.http_server",
                                        "-b", host, "-p", str(port), "-t", "30",
                                        "--websocket_connect_timeout", "5",
                                        "--websocket-max-message-size", "65536",
                                        "--access-log", str(access_log),
                                        "signaling_site.asgi:application")))
        celery = (sys.executable, "-m", "celery", "-A", "signaling_site")
        sup.add(ChildSpec("celery-worker", (*celery, "worker", "--loglevel", "INFO",
                                            "--concurrency", "2", "--hostname", "edge@%h",
                                            # one worker per edge: no peers to gossip or
                                            # mingle with (and kombu's gossip restart fails
                                            # with an AttributeError when Redis drops)
                                            "--without-gossip", "--without-mingle"),
                          # its cold shutdown (SIGQUIT) takes seconds; pool processes end
                          # with it (signaling_site.celery sets their death signal)
                          death_signal=signal.SIGKILL))
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
        redis = shared_redis(settings.REDIS_URL)
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
            f"{r.code}:{format_addr((public, relay.public_port))}"
            for r in topology.regions for relay in r.relays
        )
        self.stdout.write(f"READY {base}/ relays={relays}")
        self.stdout.write(f"  demo       {base}/")
        self.stdout.write(f"  WHIP       POST {base}/v1/sessions")
        self.stdout.write(f"  dashboard  {base}/dashboard/")
        self.stdout.write(f"  admin      {base}/admin/")
        self.stdout.write(f"  metrics    {base}/metrics " + " ".join(
            f"{name}=http://{admin}/metrics" for name, admin in self._admin_addresses(topology)))

    def _admin_addresses(self, topology: Topology) -> list[tuple[str, str]]:
        """Each daemon's admin HOST:PORT as its heartbeat names it (ports may be picked by the
        kernel; a restarted daemon publishes its new one)."""
        redis = shared_redis(settings.REDIS_URL)
        found = []
        for region in topology.regions:
            for relay in region.relays:
                raw = redis.get(relay_heartbeat_key(relay.shard, 0))
                admin = RelayHeartbeat.from_json(raw).admin if raw else ""
                found.append((f"relay-{relay.shard}", admin))
            for xcvr in region.transceivers:
                raw = redis.get(transceiver_heartbeat_key(xcvr.id))
                admin = TransceiverHeartbeat.from_json(raw).admin if raw else ""
                found.append((f"transceiver-{xcvr.id}", admin))
        return [(name, admin) for name, admin in found if admin]
