from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.contrib.auth.models import User
from django.test import Client

from geo.admin import RegionAdmin
from geo.models import Region
from geo.services import region_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in() -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


def test_region_admin_is_registered() -> None:
    model_admin = site._registry[Region]
    assert isinstance(model_admin, RegionAdmin)
    assert model_admin.list_display == (
        "code", "name", "latitude", "longitude", "enabled", "is_default"
    )
    assert model_admin.list_editable == ("enabled",)


def test_changelist_renders(admin_client_logged_in: Client) -> None:
    region_upsert(code="eu-west", name="Dublin", latitude=53.35, longitude=-6.26, is_default=True)
    response = admin_client_logged_in.get("/admin/geo/region/")
    assert response.status_code == 200
    assert b"eu-west" in response.content


@pytest.mark.parametrize(("action", "enabled"), [("disable_regions", False),
                                                   ("enable_regions", True)])
def test_enable_disable_actions(admin_client_logged_in: Client, action: str, enabled: bool) -> None:
    a = region_upsert(code="a", name="A", latitude=0, longitude=0, enabled=not enabled)
    b = region_upsert(code="b", name="B", latitude=1, longitude=1, enabled=not enabled)
    response = admin_client_logged_in.post(
        "/admin/geo/region/",
        {"action": action, "_selected_action": [a.pk, b.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert list(Region.objects.values_list("enabled", flat=True)) == [enabled, enabled]
