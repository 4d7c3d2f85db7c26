"""``manage.py run_transceiver --id N --bind HOST:PORT [--region CODE] [--capacity N]
[--agent DOTTED.PATH] [--admin HOST:PORT]``."""

from __future__ import annotations

import asyncio
import logging.config
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from geo.models import Region
from geo.selectors import region_by_code
from relays.registry import addr_argument
from transceivers.daemon import TransceiverConfig, serve


class Command(BaseCommand):
    help = "Run a transceiver: one internal UDP socket for all its WebRTC sessions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--id", type=int, required=True, dest="transceiver_id")
        parser.add_argument(
            "--bind", type=addr_argument, required=True, help="HOST:PORT of the internal socket"
        )
        parser.add_argument("--region", default=settings.DEFAULT_REGION)
        parser.add_argument("--capacity", type=int, default=settings.TRANSCEIVER_CAPACITY)
        parser.add_argument(
            "--admin", type=addr_argument, help="HOST:PORT serving GET /livez and /readyz"
        )
        parser.add_argument(
            "--agent", default=settings.VOICE_AGENT,
            help="dotted path of the voice agent factory (session_id -> VoiceAgent)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["bind"]
        try:
            agent_factory = import_string(options["agent"])
        except ImportError as exc:
            raise CommandError(f"--agent {options['agent']!r}: {exc}") from None
        try:
            region_by_code(code=options["region"])  # fail fast; serve() upserts the row
        except Region.DoesNotExist:
            raise CommandError(f"unknown region {options['region']!r}") from None
        config = TransceiverConfig(
            transceiver_id=options["transceiver_id"], bind_host=host, bind_port=port,
            redis_url=settings.REDIS_URL, region_code=options["region"],
            capacity=options["capacity"], connect_timeout=settings.SESSION_CONNECT_TIMEOUT,
            heartbeat_interval=settings.HEARTBEAT_INTERVAL, heartbeat_ttl=settings.HEARTBEAT_TTL,
            drain_grace=settings.DRAIN_GRACE,
            admin=options["admin"],
        )
        logging.config.dictConfig(settings.LOGGING)
        asyncio.run(serve(config, agent_factory=agent_factory))

