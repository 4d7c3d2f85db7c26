"""``manage.py run_relay --shard N --public HOST:PORT [--advertise HOST:PORT] --internal HOST:PORT
[--internal-advertise HOST:PORT] [--tcp HOST:PORT [--tcp-advertise HOST:PORT]] [--workers N]
[--region CODE]``: register the shard, then run N relay workers sharing every port. ``--public``
is bound, ``--advertise`` is what answers carry; ``--tcp`` adds the ICE-TCP listener (RFC 6544)."""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import signal
import socket
from dataclasses import replace
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from fleet.addresses import Addr, addr_argument, format_addr, is_wildcard
from fleet.sockets import bind_udp
from fleet.startup import freeze_startup_objects
from geo.models import Region
from relays.daemon import RelayConfig, run
from relays.demux import DEFAULT_MAX_QUEUE_AGE
from relays.services import relay_register

logger = logging.getLogger(__name__)


class _Stop(Exception):
    pass


class Command(BaseCommand):
    help = "Run a relay shard: one public UDP port, framed forwarding to transceivers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", type=int, required=True)
        parser.add_argument(
            "--public", type=addr_argument, required=True, help="HOST:PORT clients send to"
        )
        parser.add_argument(
            "--advertise", type=addr_argument,
            help="HOST:PORT answers carry (NAT, load balancer; default: the --public address). "
            "Bound to 0.0.0.0 (or [::]), each reply leaves from the address its client sent to "
            "(IP_PKTINFO), so a multi-address host answers from the right one",
        )
        parser.add_argument(
            "--internal", type=addr_argument, required=True, help="HOST:PORT transceivers use"
        )
        parser.add_argument(
            "--internal-advertise", type=addr_argument,
            help="HOST:PORT registered for the internal side (default: the --internal address)",
        )
        parser.add_argument(
            "--tcp", type=addr_argument,
            help="HOST:PORT of the ICE-TCP listener (RFC 6544 passive, RFC 4571 framing; 443 in "
            "production); answers carry it after the UDP candidate",
        )
        parser.add_argument(
            "--tcp-advertise", type=addr_argument,
            help="HOST:PORT answers carry for TCP (default: the advertised UDP host and the "
            "--tcp port); the host must be the advertised UDP host",
        )
        parser.add_argument("--workers", type=int, default=1, help="SO_REUSEPORT processes")
        parser.add_argument("--region", default=settings.DEFAULT_REGION)
        parser.add_argument(
            "--admin", type=addr_argument,
            help="HOST:PORT serving /livez, /readyz and /metrics (worker 0)",
        )
        parser.add_argument(
            "--max-queue-age", type=float, default=DEFAULT_MAX_QUEUE_AGE, metavar="SECONDS",
            help="drop datagrams that waited longer in a socket (after a freeze)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers = options["workers"]
        public, internal = options["public"], options["internal"]
        if workers < 1:
            raise CommandError("--workers must be >= 1")
        if workers > 1 and (public[1] == 0 or internal[1] == 0):
            raise CommandError("port 0 is not allowed with --workers > 1: workers share ports")
        public, internal = _resolve_port(public), _resolve_port(internal)
        advertise = _advertised(options["advertise"], public, "--advertise")
        internal_advertise = _advertised(
            options["internal_advertise"], internal, "--internal-advertise"
        )
        tcp, tcp_port = _tcp(options["tcp"], options["tcp_advertise"], advertise, workers)
        try:
            relay_register(
                shard_id=options["shard"], region_code=options["region"],
                public_host=advertise[0], public_port=advertise[1],
                internal_host=internal_advertise[0], internal_port=internal_advertise[1],
                tcp_port=tcp_port,
            )
        except Region.DoesNotExist:
            raise CommandError(f"unknown region {options['region']!r}") from None
        except ValidationError as exc:
            raise CommandError(f"bad relay shard: {exc}") from None
        config = RelayConfig(
            shard=options["shard"], public=public, internal=internal,
            redis_url=settings.REDIS_URL, keyring=settings.UFRAG_KEYRING,
            idle_timeout=settings.FLOW_IDLE_TIMEOUT, max_flows=settings.FLOW_TABLE_MAX,
            heartbeat_interval=settings.HEARTBEAT_INTERVAL, heartbeat_ttl=settings.HEARTBEAT_TTL,
            drain_grace=settings.DRAIN_GRACE, max_queue_age=options["max_queue_age"],
            admin=options["admin"], advertise=options["advertise"],
            internal_advertise=options["internal_advertise"], fastpath=settings.RELAY_FASTPATH,
            tcp=tcp,
        )
        logging.config.dictConfig(settings.LOGGING)
        freeze_startup_objects()  # before the workers fork: they share the frozen pages
        if workers == 1:
            run(config)
        else:
            _run_workers(config, workers)


def _resolve_port(addr: Addr, kind: int = socket.SOCK_DGRAM) -> Addr:
    """Turn port 0 into a free port now so the registered row names the real one (dev only)."""
    if addr[1] != 0:
        return addr
    if kind == socket.SOCK_DGRAM:
        probe = bind_udp(addr)
    else:
        probe = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, kind)
        probe.bind(addr)
    port = probe.getsockname()[1]
    probe.close()  # tiny race until the worker binds it again; only with --workers 1
    return addr[0], port


def _tcp(
    bind: Addr | None, given: Addr | None, advertise: Addr, workers: int
) -> tuple[Addr | None, int | None]:
    """The ICE-TCP address to bind and the port answers carry (on the advertised UDP host)."""
    if bind is None:
        if given is not None:
            raise CommandError("--tcp-advertise needs --tcp")
        return None, None
    if bind[1] == 0:
        if workers > 1:
            raise CommandError("port 0 is not allowed with --workers > 1: workers share ports")
        bind = _resolve_port(bind, socket.SOCK_STREAM)
    if given is None:
        return bind, bind[1]
    if given[1] == 0 or given[0] != advertise[0]:
        raise CommandError("--tcp-advertise must name the advertised UDP host and a port")
    return bind, given[1]


def _advertised(given: Addr | None, bound: Addr, flag: str) -> Addr:
    """What the shard registers: ``given``, else the bound address unless it is a wildcard."""
    if given is not None:
        if given[1] == 0 or is_wildcard(given[0]):
            raise CommandError(f"{flag} needs a routable HOST and a PORT other than 0")
        return given
    if is_wildcard(bound[0]):
        raise CommandError(f"{flag} HOST:PORT is required when binding {format_addr(bound)}")
    return bound


def _worker(config: RelayConfig) -> None:
    run(config)


def _run_workers(config: RelayConfig, workers: int) -> None:
    """Fork ``workers`` relay processes; stop them all on SIGINT/SIGTERM or when one dies."""
    connections.close_all()  # never share DB sockets with forked children
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=_worker, args=(replace(config, worker=index),), daemon=False)
        for index in range(workers)
    ]
    for proc in procs:
        proc.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait([proc.sentinel for proc in procs])
        logger.error("a relay worker exited; stopping the others")
    except _Stop:
        pass
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # let the shutdown below finish
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: serve() closes cleanly
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if any(proc.exitcode not in (0, -signal.SIGTERM) for proc in procs):
        raise CommandError("a relay worker failed")
