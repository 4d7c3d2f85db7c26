from typing import Any

from django.apps import AppConfig


def _geoip_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Tests that override GEOIP_DATABASE get a locator for the new file."""
    if setting == "GEOIP_DATABASE":
        from geo.geoip import get_locator

        get_locator.cache_clear()


class GeoConfig(AppConfig):
    name = "geo"
    verbose_name = "Regions"

    def ready(self) -> None:
        from django.core import checks
        from django.test.signals import setting_changed

        from geo.checks import check_geoip_database

        checks.register(check_geoip_database)
        setting_changed.connect(_geoip_setting_changed, dispatch_uid="geo.geoip_setting_changed")
