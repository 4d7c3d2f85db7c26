"""Admin login throttling (django-axes), secure cookies outside DEBUG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(transaction=True)
async def test_admin_login_locks_after_five_failures_per_user_and_address() -> None:
    await User.objects.acreate(username="ops", is_staff=True, is_superuser=True,
                               password="")
    user = await User.objects.aget(username="ops")
    user.set_password("right-password-123")
    await user.asave()
    client = AsyncClient()

    async def login(password: str) -> int:
        response = await client.post("/admin/login/?next=/admin/",
                                     {"username": "ops", "password": password})
        return int(response.status_code)

    assert await login("wrong") == 200  # the form again
    for _ in range(5):
        await login("wrong")
    assert await login("right-password-123") in (403, 429)  # locked out: right one refused
    response = await AsyncClient().post(  # another address, through the trusted local proxy
        "/admin/login/?next=/admin/", {"username": "ops", "password": "right-password-123"},
        headers={"X-Forwarded-For": "198.51.100.4"},
    )
    assert response.status_code == 302  # another address is not locked out


@pytest.mark.parametrize(("debug", "secure"), [("0", "True"), ("1", "False")])
def test_cookies_are_secure_unless_debug(debug: str, secure: str, tmp_path: Path) -> None:
    env = {**os.environ, "DEBUG": debug, "EDGE_VAR_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "signaling_site.settings"}
    code = ("from django.conf import settings; "
            "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, text=True,
                            capture_output=True, timeout=60, check=True)
    assert result.stdout.split() == [secure, secure]
