"""``manage.py run_relay --shard N --public HOST:PORT --internal HOST:PORT [--workers N]
[--region CODE]``: register the shard, then run N relay workers sharing both ports."""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import signal
from dataclasses import replace
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from geo.models import Region
from relays.daemon import RelayConfig, bind_udp, run
from relays.framing import Addr
from relays.registry import addr_argument
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
            "--internal", type=addr_argument, required=True, help="HOST:PORT transceivers use"
        )
        parser.add_argument("--workers", type=int, default=1, help="SO_REUSEPORT processes")
        parser.add_argument("--region", default=settings.DEFAULT_REGION)
        parser.add_argument(
            "--admin", type=addr_argument, help="HOST:PORT serving /livez and /readyz (worker 0)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers = options["workers"]
        public, internal = options["public"], options["internal"]
        if workers < 1:
            raise CommandError("--workers must be >= 1")
        if workers > 1 and (public[1] == 0 or internal[1] == 0):
            raise CommandError("port 0 is not allowed with --workers > 1: workers share ports")
        public, internal = _resolve_port(public), _resolve_port(internal)
        try:
            relay_register(
                shard_id=options["shard"], region_code=options["region"],
                public_host=public[0], public_port=public[1],
                internal_host=internal[0], internal_port=internal[1],
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
            drain_grace=settings.DRAIN_GRACE,
            admin=options["admin"],
        )
        logging.config.dictConfig(settings.LOGGING)
        if workers == 1:
            run(config)
        else:
            _run_workers(config, workers)


def _resolve_port(addr: Addr) -> Addr:
    """Turn port 0 into a free port now so the registered row names the real one (dev only)."""
    if addr[1] != 0:
        return addr
    probe = bind_udp(addr)
    port = probe.getsockname()[1]
    probe.close()  # tiny race until the worker binds it again; only with --workers 1
    return addr[0], port


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
