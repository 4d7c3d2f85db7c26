"""``manage.py run_transceiver [--id N] --bind HOST:PORT [--advertise HOST:PORT] [--region CODE]
[--capacity N] [--agent DOTTED.PATH] [--admin HOST:PORT]``. Without ``--id``, a StatefulSet
pod's id: ``TRANSCEIVER_ID_BASE`` + ``POD_INDEX`` (its ordinal).

The composition root of a transceiver process (like ``up``): it joins the daemon
(``transceivers``) to the DB writer of session rows (``calls``), a layer above it.
"""

from __future__ import annotations

import asyncio
import logging.config
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from calls.reporting import SessionRowReporter
from fleet.addresses import addr_argument, is_wildcard
from fleet.nodes import NodeKind, transceiver_id_of_pod
from fleet.startup import freeze_startup_objects
from geo.models import Region
from geo.selectors import region_by_code
from health.services import node_resume_after_drain
from transceivers.daemon import TransceiverConfig, serve


class Command(BaseCommand):
    help = "Run a transceiver: one internal UDP socket for all its WebRTC sessions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id", type=int, dest="transceiver_id",
            help="transceiver id (default: TRANSCEIVER_ID_BASE + POD_INDEX, a StatefulSet pod's)",
        )
        parser.add_argument(
            "--bind", type=addr_argument, required=True, help="HOST:PORT of the internal socket"
        )
        parser.add_argument(
            "--advertise", type=addr_argument,
            help="HOST:PORT relays frame to (registry and DB row; default: the --bind address)",
        )
        parser.add_argument("--region", default=settings.DEFAULT_REGION)
        parser.add_argument("--capacity", type=int, default=settings.TRANSCEIVER_CAPACITY)
        parser.add_argument(
            "--admin", type=addr_argument, help="HOST:PORT serving GET /livez, /readyz and /metrics"
        )
        parser.add_argument(
            "--agent", default=settings.VOICE_AGENT,
            help="dotted path of the voice agent factory (session_id -> VoiceAgent)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["bind"]
        advertise = options["advertise"]
        if advertise is not None and (advertise[1] == 0 or is_wildcard(advertise[0])):
            raise CommandError("--advertise needs a routable HOST and a PORT other than 0")
        if advertise is None and is_wildcard(host):
            raise CommandError(f"--advertise HOST:PORT is required when binding {host}")
        try:
            agent_factory = import_string(options["agent"])
        except ImportError as exc:
            raise CommandError(f"--agent {options['agent']!r}: {exc}") from None
        try:
            region_by_code(code=options["region"])  # fail fast; serve() upserts the row
        except Region.DoesNotExist:
            raise CommandError(f"unknown region {options['region']!r}") from None
        config = TransceiverConfig(
            transceiver_id=transceiver_id(options["transceiver_id"]),
            bind_host=host, bind_port=port,
            redis_url=settings.REDIS_URL, region_code=options["region"],
            capacity=options["capacity"], connect_timeout=settings.SESSION_CONNECT_TIMEOUT,
            heartbeat_interval=settings.HEARTBEAT_INTERVAL, heartbeat_ttl=settings.HEARTBEAT_TTL,
            drain_grace=settings.DRAIN_GRACE,
            admin=options["admin"], advertise=advertise,
            dtls_retransmit=settings.DTLS_RETRANSMIT_INITIAL,
            shared_certificate=settings.TRANSCEIVER_SHARED_CERTIFICATE,
        )
        logging.config.dictConfig(settings.LOGGING)
        if options["transceiver_id"] is None:
            # a StatefulSet pod replacing one drained by its preStop hook: the drain was the
            # old pod's, so this one takes sessions (an operator's pending drain stands)
            node_resume_after_drain(kind=NodeKind.TRANSCEIVER, node_id=config.transceiver_id)
        freeze_startup_objects()
        asyncio.run(serve(config, reporter=SessionRowReporter(), agent_factory=agent_factory))



def transceiver_id(given: int | None) -> int:
    """``--id``, else the StatefulSet pod's id from ``TRANSCEIVER_ID_BASE`` and ``POD_INDEX``."""
    if given is not None:
        return given
    if not settings.POD_INDEX:
        raise CommandError("--id is required outside a StatefulSet (POD_INDEX is not set)")
    try:
        return transceiver_id_of_pod(settings.TRANSCEIVER_ID_BASE, settings.POD_INDEX)
    except ValueError as exc:
        raise CommandError(f"POD_INDEX {settings.POD_INDEX!r}: {exc}") from None
