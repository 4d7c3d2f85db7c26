"""``manage.py apikey create|revoke|list`` and the services behind them, on the test database."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from access.models import ApiKey
from access.rules import CredentialKind
from access.selectors import credential_for_token
from access.services import apikey_create, apikey_revoke, client_secret_mint
from access.tokens import hash_token
from tests.dashboard.fleet import make_region

pytestmark = [pytest.mark.django_db]


def _run(*args: str) -> list[str]:
    out = StringIO()
    call_command("apikey", *args, stdout=out)
    return out.getvalue().splitlines()


def test_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash() -> None:
    make_region("eu-west")
    lines = _run("create", "backend", "--region", "eu-west", "--rate-limit", "30")
    token = lines[-1]
    assert token.startswith("ek_") and " " not in token and len(token) == 46
    assert "backend" in lines[0] and "eu-west" in lines[0] and "30 offers/minute" in lines[0]
    key = ApiKey.objects.get(name="backend")
    assert key.key_hash == hash_token(token) and token not in (key.prefix, key.key_hash)
    assert token.startswith(key.prefix) and key.rate_limit_per_minute == 30
    credential = credential_for_token(token=token)
    assert credential is not None and credential.kind is CredentialKind.API_KEY
    assert (credential.api_key_name, credential.region_code) == ("backend", "eu-west")
    assert credential.rate_limit_per_minute == 30


def test_create_refuses_a_taken_name_an_unknown_region_and_a_zero_limit() -> None:
    _run("create", "backend")
    with pytest.raises(CommandError, match="already exists"):
        _run("create", "backend")
    with pytest.raises(CommandError, match="unknown region 'mars'"):
        _run("create", "other", "--region", "mars")
    with pytest.raises(CommandError, match="greater than or equal to 1"):
        _run("create", "other", "--rate-limit", "0")
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["backend"]


def test_revoke_stops_the_key_and_its_client_secrets_at_once() -> None:
    key, token = apikey_create(name="backend")
    secret = client_secret_mint(credential=credential_for_token(token=token), seconds=600)
    assert credential_for_token(token=secret.value) is not None
    assert _run("revoke", "backend") == ["revoked API key backend and its client secrets"]
    assert credential_for_token(token=token) is None
    assert credential_for_token(token=secret.value) is None
    assert _run("revoke", "backend") == ["API key backend was already revoked"]
    with pytest.raises(CommandError, match="no API key named 'nobody'"):
        _run("revoke", "nobody")


def test_list_shows_prefixes_never_keys() -> None:
    _, live = apikey_create(name="alpha", rate_limit_per_minute=5)
    _, dead = apikey_create(name="beta")
    apikey_revoke(name="beta")
    lines = _run("list")
    assert [line.split("\t")[0] for line in lines] == ["alpha", "beta"]
    assert "rate=5/min" in lines[0] and "active" in lines[0] and "revoked" in lines[1]
    assert live[:11] in lines[0] and live not in "\n".join(lines) and dead not in lines[1]


def test_the_sweep_deletes_long_expired_secrets_that_made_no_session(
    settings: object,
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from access.models import ClientSecret
    from access.tasks import client_secrets_sweep_task
    from calls.models import Session
    from tests.dashboard.fleet import make_nodes, make_session

    _, token = apikey_create(name="backend")
    credential = credential_for_token(token=token)
    for _ in range(3):
        client_secret_mint(credential=credential, seconds=600)
    old, used, fresh = ClientSecret.objects.order_by("pk")
    relay, xcvr = make_nodes(make_region("eu-west"), 1)
    Session.objects.filter(pk=make_session(relay, xcvr).pk).update(client_secret=used)
    long_ago = timezone.now() - timedelta(hours=2)
    ClientSecret.objects.filter(pk__in=[old.pk, used.pk]).update(expires_at=long_ago)
    assert client_secrets_sweep_task() == 1
    assert list(ClientSecret.objects.order_by("pk")) == [used, fresh]
    assert client_secrets_sweep_task() == 0
