"""``manage.py region CODE --name NAME --latitude LAT --longitude LON [--default]``: create or
update a region (a Kubernetes overlay's region Job registers its own region this way). The
region named by ``DEFAULT_REGION`` is the default one."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from geo.services import region_upsert


class Command(BaseCommand):
    help = "Create or update a region (code, name, coordinates)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("code")
        parser.add_argument("--name", required=True)
        parser.add_argument("--latitude", type=float, required=True)
        parser.add_argument("--longitude", type=float, required=True)
        parser.add_argument("--default", action="store_true", help="the fallback region")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            region = region_upsert(code=options["code"], name=options["name"],
                                   latitude=options["latitude"], longitude=options["longitude"],
                                   is_default=options["default"]
                                   or options["code"] == settings.DEFAULT_REGION)
        except ValidationError as exc:
            raise CommandError(f"bad region: {exc}") from None
        default = " default" if region.is_default else ""
        self.stdout.write(f"region {region.code}: {region.name} "
                          f"({region.latitude}, {region.longitude}){default}")
