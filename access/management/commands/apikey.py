"""``manage.py apikey create NAME [--region CODE] [--rate-limit N]`` (the key alone on the last
line), ``manage.py apikey revoke NAME``, ``manage.py apikey list``."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from access.models import ApiKey
from access.selectors import apikey_list
from access.services import apikey_create, apikey_revoke
from geo.models import Region


class Command(BaseCommand):
    help = "Create, revoke or list API keys for the WHIP API."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key and print it (once)")
        create.add_argument("name")
        create.add_argument("--region", default=None, help="only place sessions in this region")
        create.add_argument("--rate-limit", type=int, default=None, metavar="N",
                            help="offers per minute for this key and its client secrets")
        revoke = sub.add_parser("revoke", help="revoke a key and every client secret it minted")
        revoke.add_argument("name")
        sub.add_parser("list", help="every key: name, prefix, region, limit, state")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options["name"], options["region"], options["rate_limit"])
        elif action == "revoke":
            self._revoke(options["name"])
        else:
            self._list()

    def _create(self, name: str, region: str | None, rate_limit: int | None) -> None:
        try:
            key, token = apikey_create(name=name, region_code=region,
                                       rate_limit_per_minute=rate_limit)
        except Region.DoesNotExist:
            raise CommandError(f"unknown region {region!r}") from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        limits = [f"region {region}"] if region else []
        limits += [f"{rate_limit} offers/minute"] if rate_limit else []
        self.stdout.write(f"created API key {key.name} ({key.prefix}…)"
                          + (f": {', '.join(limits)}" if limits else "")
                          + ". It is shown only now; store it:")
        self.stdout.write(token)

    def _revoke(self, name: str) -> None:
        try:
            changed = apikey_revoke(name=name)
        except ApiKey.DoesNotExist:
            raise CommandError(f"no API key named {name!r}") from None
        self.stdout.write(f"revoked API key {name} and its client secrets" if changed
                          else f"API key {name} was already revoked")

    def _list(self) -> None:
        for key in apikey_list():
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            region = key.region.code if key.region else "any"
            limit = f"{key.rate_limit_per_minute}/min" if key.rate_limit_per_minute else "-"
            self.stdout.write(f"{key.name}\t{key.prefix}…\tregion={region}\trate={limit}\t"
                              f"{state}\tcreated {key.created_at:%Y-%m-%d %H:%M}")
