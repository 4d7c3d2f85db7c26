"""``manage.py drain transceiver [N] | relay N [--reason TEXT] [--resume] [--wait [--timeout S]]``.

Drain: no new sessions on the node at once (stored state), and its daemon lets live calls finish
(up to ``DRAIN_GRACE``) and exits. ``--wait`` returns when the node's process has left.
``drain transceiver`` without N, in a transceiver pod (its ``preStop`` hook), drains that pod's.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.keys import relay_heartbeat_key, transceiver_heartbeat_key
from fleet.nodes import MAX_RELAY_WORKERS, NodeKind, transceiver_id_of_pod
from fleet.redis_client import shared_redis
from health.services import node_drain, node_resume

WAIT_POLL = 0.2


class Command(BaseCommand):
    help = "Drain a transceiver or relay shard (no new sessions, live ones finish), or resume it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=[k.value for k in NodeKind])
        parser.add_argument(
            "node_id", type=int, nargs="?",
            help="node id (transceiver default: this pod's, TRANSCEIVER_ID_BASE + POD_INDEX)",
        )
        parser.add_argument("--reason", default="drained by operator (manage.py drain)")
        parser.add_argument("--resume", action="store_true", help="cancel a drain")
        parser.add_argument("--wait", action="store_true", help="return once the node exited")
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for --wait")

    def handle(self, *args: Any, **options: Any) -> None:
        kind, node_id = options["kind"], self._node_id(options["kind"], options["node_id"])
        try:
            if options["resume"]:
                changed = node_resume(kind=kind, node_id=node_id, reason="resumed by operator")
                self.stdout.write(f"{kind} {node_id}: {'resumed' if changed else 'not draining'}")
                return
            changed = node_drain(kind=kind, node_id=node_id, reason=options["reason"])
        except ObjectDoesNotExist:
            raise CommandError(f"no {kind} {node_id}") from None
        self.stdout.write(f"{kind} {node_id}: {'draining' if changed else 'already draining'}")
        if options["wait"]:
            self._wait_gone(kind, node_id, options["timeout"])

    def _node_id(self, kind: str, given: int | None) -> int:
        if given is not None:
            return given
        if kind != NodeKind.TRANSCEIVER or not settings.POD_INDEX:
            raise CommandError(f"which {kind}? (no id given and not in a transceiver pod)")
        try:
            return transceiver_id_of_pod(settings.TRANSCEIVER_ID_BASE, settings.POD_INDEX)
        except ValueError as exc:
            raise CommandError(f"POD_INDEX {settings.POD_INDEX!r}: {exc}") from None

    def _wait_gone(self, kind: str, node_id: int, timeout: float) -> None:
        """Until no heartbeat of the node is left (it exits after its drain)."""
        if kind == NodeKind.RELAY:
            keys = [relay_heartbeat_key(node_id, worker) for worker in range(MAX_RELAY_WORKERS)]
        else:
            keys = [transceiver_heartbeat_key(node_id)]
        deadline = time.monotonic() + timeout
        while shared_redis(settings.REDIS_URL).exists(*keys):
            if time.monotonic() > deadline:
                raise CommandError(f"{kind} {node_id} still running after {timeout:g}s")
            time.sleep(WAIT_POLL)
        self.stdout.write(f"{kind} {node_id}: drained and exited")
