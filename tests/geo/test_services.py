from __future__ import annotations

import pytest

from geo.models import Region
from geo.services import region_upsert, regions_set_enabled

pytestmark = pytest.mark.django_db


def test_regions_set_enabled_counts_only_changes() -> None:
    region_upsert(code="a", name="A", latitude=0, longitude=0)
    region_upsert(code="b", name="B", latitude=0, longitude=0, enabled=False)
    assert regions_set_enabled(codes=["a", "b", "unknown"], enabled=False) == 1
    assert not Region.objects.filter(enabled=True).exists()
    assert regions_set_enabled(codes=iter(["a", "b"]), enabled=True) == 2
    assert Region.objects.filter(enabled=True).count() == 2
