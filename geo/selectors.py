"""Reads on regions."""

from __future__ import annotations

from geo.models import Region


def region_by_code(*, code: str) -> Region:
    """Return the region ``code``; ``Region.DoesNotExist`` when unknown."""
    return Region.objects.get(code=code)


def region_default() -> Region | None:
    return Region.objects.filter(is_default=True).first()
