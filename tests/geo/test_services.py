from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings

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


def test_region_command_upserts_and_refuses_bad_coordinates(settings: Settings) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("region", "us-east", "--name", "Virginia", "--latitude", "38.95",
                 "--longitude", "-77.45", stdout=out)
    assert out.getvalue().startswith("region us-east: Virginia")
    call_command("region", "us-east", "--name", "Ashburn", "--latitude", "39.0",
                 "--longitude", "-77.5", "--default", stdout=out)
    region = Region.objects.get(code="us-east")
    assert (region.name, region.is_default) == ("Ashburn", True)
    settings.DEFAULT_REGION = "ap-south"
    call_command("region", "ap-south", "--name", "Mumbai", "--latitude", "19.08",
                 "--longitude", "72.88", stdout=out)
    assert Region.objects.get(is_default=True).code == "ap-south"
    with pytest.raises(CommandError, match="bad region"):
        call_command("region", "x", "--name", "X", "--latitude", "95", "--longitude", "0")
