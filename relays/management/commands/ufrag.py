"""``manage.py ufrag decode <ufrag>`` / ``manage.py ufrag mint --shard N --transceiver M``."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from relays.ufrag import NONCE_BYTES, mint_ufrag, parse_ufrag, validate_ufrag


class Command(BaseCommand):
    help = "Decode (and verify with UFRAG_KEYS) or mint a server ICE ufrag."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        decode = sub.add_parser("decode", help="print the fields of a ufrag and verify its MAC")
        decode.add_argument("ufrag")
        mint = sub.add_parser("mint", help="mint a ufrag with the current key")
        mint.add_argument("--shard", type=int, required=True)
        mint.add_argument("--transceiver", type=int, required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "mint":
            key_id = settings.UFRAG_MINT_KEY_ID
            try:
                text = mint_ufrag(
                    shard=options["shard"], transceiver=options["transceiver"], key_id=key_id,
                    key=settings.UFRAG_KEYRING[key_id], nonce=secrets.token_bytes(NONCE_BYTES),
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(text)
            return
        self._decode(options["ufrag"])

    def _decode(self, text: str) -> None:
        try:
            claims = parse_ufrag(text)
        except ValueError as exc:
            raise CommandError(f"cannot decode: {exc}") from None
        try:
            validate_ufrag(text, keys=settings.UFRAG_KEYRING)
            verified = "yes"
        except ValueError as exc:
            verified = f"no ({exc})"
        self.stdout.write(
            f"version: {claims.version}\nkey id: {claims.key_id}\nshard: {claims.shard}\n"
            f"transceiver: {claims.transceiver}\nnonce: {claims.nonce.hex()}\n"
            f"verified: {verified}"
        )
