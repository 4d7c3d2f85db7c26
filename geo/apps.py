from typing import Any

from django.apps import AppConfig


def _geo_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """Tests that override geo settings get fresh cached objects."""
    if setting == "GEOIP_DATABASE":
        from geo.geoip import get_locator

        get_locator.cache_clear()
    elif setting == "TRUSTED_PROXIES":
        from geo.client_ip import get_trusted_proxies

        get_trusted_proxies.cache_clear()


def _region_changed(**kwargs: Any) -> None:
    """A region saved or deleted in this process: steering reads the regions afresh."""
    from geo.selectors import regions_cache_clear

    regions_cache_clear()


class GeoConfig(AppConfig):
    name = "geo"
    verbose_name = "Regions"

    def ready(self) -> None:
        from django.core import checks
        from django.test.signals import setting_changed

        from geo.checks import check_geoip_database, check_trusted_proxies

        checks.register(check_geoip_database)
        checks.register(check_trusted_proxies)
        setting_changed.connect(_geo_setting_changed, dispatch_uid="geo.setting_changed")
        from django.db.models.signals import post_delete, post_save

        from geo.models import Region

        post_save.connect(_region_changed, sender=Region, dispatch_uid="geo.region_saved")
        post_delete.connect(_region_changed, sender=Region, dispatch_uid="geo.region_deleted")
