"""Steering's cached regions: no DB read per offer, every write in this process seen at once,
another process's within ``REGIONS_CACHE_TTL``."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls.steering import rank_regions_for
from geo import selectors
from geo.models import Region
from geo.selectors import REGIONS_CACHE_TTL, regions_by_code
from geo.services import region_upsert, regions_set_enabled

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(selectors, "monotonic", lambda: now[0])
    return now


@pytest.fixture(autouse=True)
def two_regions() -> None:
    region_upsert(code="eu-west", name="Dublin", latitude=53.35, longitude=-6.26, is_default=True)
    region_upsert(code="us-east", name="Virginia", latitude=38.95, longitude=-77.45)


def codes() -> list[str]:
    return [r.code for r, _ in rank_regions_for(client_ip=None, pinned=None)]


def test_an_offer_steers_without_a_query_once_the_regions_are_cached() -> None:
    assert codes() == ["eu-west", "us-east"]
    with CaptureQueriesContext(connection) as queries:
        assert codes() == ["eu-west", "us-east"]
        assert rank_regions_for(client_ip=None, pinned="us-east")[0][0].code == "us-east"
    assert queries.captured_queries == []


def test_saves_deletes_and_bulk_switches_in_this_process_are_seen_at_once() -> None:
    assert codes() == ["eu-west", "us-east"]
    region_upsert(code="ap-south", name="Mumbai", latitude=19.08, longitude=72.88)
    assert codes() == ["eu-west", "ap-south", "us-east"]  # the default first, then by load
    regions_set_enabled(codes=["ap-south"], enabled=False)  # a bulk update: no model signal
    assert not regions_by_code()["ap-south"].enabled
    Region.objects.get(code="ap-south").delete()
    assert codes() == ["eu-west", "us-east"]


def test_another_processs_change_is_seen_within_the_ttl(clock: list[float]) -> None:
    assert regions_by_code()["us-east"].enabled
    Region.objects.filter(code="us-east").update(enabled=False)  # as another process would
    assert regions_by_code()["us-east"].enabled  # still the cached copy
    clock[0] += REGIONS_CACHE_TTL
    assert not regions_by_code()["us-east"].enabled


def test_a_pinned_region_not_cached_yet_is_looked_up() -> None:
    assert codes() == ["eu-west", "us-east"]
    Region.objects.bulk_create([Region(code="ap-south", name="Mumbai", latitude=19.08,
                                       longitude=72.88)])  # no signal, as another process
    assert rank_regions_for(client_ip=None, pinned="ap-south")[0][0].code == "ap-south"


def test_each_caller_gets_its_own_rows() -> None:
    regions_by_code()["eu-west"].name = "changed by one caller"
    assert regions_by_code()["eu-west"].name == "Dublin"


def test_a_read_begun_before_a_write_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write lands (and clears the cache) while a reader is in its query: the reader's
    result may predate the write, so it is served once but not cached."""
    real_all = Region.objects.all

    def all_then_written():  # type: ignore[no-untyped-def]
        rows = list(real_all())
        selectors.regions_cache_clear()  # a write committed meanwhile, in another thread
        return rows

    monkeypatch.setattr(Region.objects, "all", all_then_written)
    regions_by_code()
    monkeypatch.undo()
    with CaptureQueriesContext(connection) as queries:
        regions_by_code()
    assert len(queries.captured_queries) == 1  # read again: the racing result was not kept
