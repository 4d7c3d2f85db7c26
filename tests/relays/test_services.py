from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from geo.models import Region
from geo.services import region_upsert
from relays.models import RelayShard
from relays.services import relay_register

pytestmark = pytest.mark.django_db


@pytest.fixture
def region() -> Region:
    return region_upsert(code="eu-west", name="EU West", latitude=53.3, longitude=-6.3)


def _register(**overrides: object) -> RelayShard:
    args: dict[str, object] = {
        "shard_id": 7, "region_code": "eu-west", "public_host": "203.0.113.5",
        "public_port": 3478, "internal_host": "10.0.0.5", "internal_port": 4000,
    }
    args.update(overrides)
    return relay_register(**args)  # type: ignore[arg-type]


def test_register_creates_then_updates(region: Region) -> None:
    relay = _register()
    assert (relay.region, relay.public_host, relay.public_port) == (region, "203.0.113.5", 3478)
    again = _register(public_port=3479, internal_host="::1")
    assert again.pk == relay.pk and RelayShard.objects.count() == 1
    relay.refresh_from_db()
    assert (relay.public_port, relay.internal_host) == (3479, "::1")


def test_register_unknown_region() -> None:
    with pytest.raises(Region.DoesNotExist):
        _register(region_code="nowhere")


@pytest.mark.parametrize(
    "overrides", [{"shard_id": 0}, {"shard_id": 65536}, {"public_host": "relay.example"},
                  {"internal_port": 70000}],
)
def test_register_invalid(region: Region, overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _register(**overrides)
    assert not RelayShard.objects.exists()
