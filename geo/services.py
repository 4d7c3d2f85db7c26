"""Writes on regions."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from geo.models import Region
from geo.selectors import regions_cache_clear


@transaction.atomic
def region_upsert(
    *, code: str, name: str, latitude: float, longitude: float, enabled: bool = True,
    is_default: bool = False,
) -> Region:
    """Create or update a region by code; making it the default clears the old default."""
    if is_default:
        Region.objects.filter(is_default=True).exclude(code=code).update(is_default=False)
    region = Region.objects.filter(code=code).first() or Region(code=code)
    region.name, region.latitude, region.longitude = name, latitude, longitude
    region.enabled, region.is_default = enabled, is_default
    region.full_clean()
    region.save()
    return region


def region_ensure_default() -> Region:
    """Return the default region, creating ``settings.DEFAULT_REGION`` when there is none."""
    region = Region.objects.filter(is_default=True).first()
    if region is not None:
        return region
    return region_upsert(
        code=settings.DEFAULT_REGION, name="Local", latitude=0.0, longitude=0.0, is_default=True
    )


def regions_set_enabled(*, codes: Iterable[str], enabled: bool) -> int:
    """Enable or disable the regions ``codes``; return how many rows changed (a bulk update
    sends no model signal: it clears steering's cached regions itself)."""
    changed = Region.objects.filter(code__in=list(codes)).exclude(enabled=enabled).update(
        enabled=enabled
    )
    regions_cache_clear()
    return changed
