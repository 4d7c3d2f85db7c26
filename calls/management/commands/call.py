"""``python manage.py call URL``: place a WHIP call with a tone and report the echo (smoke test)."""

from __future__ import annotations

import asyncio
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from whip.client import Call, WhipError

MIN_ECHO = 0.9


class Command(BaseCommand):
    help = "Call a running edge with a 440 Hz tone and check that it comes back."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("url", nargs="?", default="http://127.0.0.1:8000")
        parser.add_argument("--seconds", type=float, default=5.0)
        parser.add_argument("--region", default=None)
        parser.add_argument("--token", default=None,
                            help="API key or client secret (default: $WHIP_TOKEN)")

    def handle(self, *args: Any, **options: Any) -> None:
        token = options["token"] or settings.WHIP_TOKEN or None
        try:
            asyncio.run(self._call(options["url"], options["seconds"], options["region"], token))
        except (WhipError, TimeoutError, OSError) as exc:
            raise CommandError(f"call failed: {exc}") from exc

    async def _call(self, url: str, seconds: float, region: str | None, token: str | None) -> None:
        call = Call(url, seconds=seconds, region=region, token=token)
        await call.start()
        try:
            await call.wait_connected()
            headers = call.response_headers
            self.stdout.write(
                f"connected in {(call.connected_at or 0) - call.offered_at:.3f}s via region "
                f"{headers['X-Region']} ({headers['X-Region-Reason']}), relay shard "
                f"{headers['X-Relay-Shard']}, transceiver {headers['X-Transceiver']}"
            )
            await call.play()
        finally:
            await call.stop()
        first = call.received.first_tone_at()
        first_ms = (first - (call.connected_at or first)) * 1000 if first else float("nan")
        ratio = call.echo_ratio()
        self.stdout.write(
            f"echo: {call.received.tone_frames}/{call.track.tone_sent} tone frames back "
            f"({ratio:.1%}); first echoed tone {first_ms:.0f} ms after connect; "
            f"session {call.location} at {time.strftime('%H:%M:%S')}"
        )
        if ratio < MIN_ECHO:
            raise CommandError(f"only {ratio:.1%} of the tone came back")
