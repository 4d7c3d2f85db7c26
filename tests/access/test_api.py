"""Bearer authentication on the WHIP API (RFC 9725 §4.5, RFC 6750) against the test database and
a real Redis: 401/403 problem+json, client secrets, revocation, ownership, the open demo."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from access.models import ApiKey, ClientSecret
from access.services import apikey_create, apikey_revoke
from access.tokens import hash_token
from calls.models import Session
from geo.services import region_ensure_default
from tests.calls.live_fleet import browser_offer, live_fleet
from tests.calls.test_sdp import OFFER
from tests.dashboard.fleet import make_nodes, make_region, make_session

pytestmark = [pytest.mark.django_db]
NO_SUCH = "/v1/sessions/00000000-0000-0000-0000-000000000000"
TRICKLE = "application/trickle-ice-sdpfrag"


@pytest.fixture(autouse=True)
def _auth_on(settings: Settings, redis_client: object) -> None:
    settings.AUTH_REQUIRED = True
    region_ensure_default()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(response: object, status: int, code: str) -> dict:
    assert response.status_code == status, response.content  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["status"] == status and body["code"] == code and body["detail"]
    return body


def _unauthorized(response: object) -> None:
    _problem(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == 'Bearer realm="voice-edge"'  # type: ignore[index]


def _invalid(response: object, description: str) -> None:
    _problem(response, 401, "invalid_token")
    assert response["WWW-Authenticate"] == (  # type: ignore[index]
        f'Bearer realm="voice-edge", error="invalid_token", error_description="{description}"')


def _offer(client: Client, token: str | None = None, query: str = "") -> object:
    return client.post("/v1/sessions" + query, data=OFFER, content_type="application/sdp",
                       headers=_bearer(token) if token else {})


def _mint(client: Client, key: str, body: object = None) -> object:
    data = "" if body is None else json.dumps(body)
    return client.post("/v1/client_secrets", data=data, content_type="application/json",
                       headers=_bearer(key))


# no token, a bad token ---------------------------------------------------------------------------

def test_every_whip_operation_without_a_token_is_401(client: Client) -> None:
    relay, xcvr = make_nodes(make_region("eu-west"), 1)
    session = f"/v1/sessions/{make_session(relay, xcvr).id}"
    _unauthorized(_offer(client))
    for path in (session, NO_SUCH):
        _unauthorized(client.get(path))
        _unauthorized(client.delete(path))
        _unauthorized(client.patch(path, data="a=end-of-candidates\r\n", content_type=TRICKLE,
                                   headers={"If-Match": '"x"'}))
    _unauthorized(client.post("/v1/client_secrets"))
    _unauthorized(client.post("/v1/sessions", data="hello", content_type="text/plain"))  # not 415
    assert Session.objects.get().state == "answered"  # nothing changed


def test_a_cross_origin_page_can_read_the_challenge(client: Client) -> None:
    response = client.post("/v1/sessions", data=OFFER, content_type="application/sdp",
                           HTTP_ORIGIN="https://app.example")
    assert response.status_code == 401
    assert "WWW-Authenticate" in response["Access-Control-Expose-Headers"]


def test_other_schemes_and_unknown_or_malformed_tokens(client: Client) -> None:
    _unauthorized(client.post("/v1/sessions", data=OFFER, content_type="application/sdp",
                              headers={"Authorization": "Basic dXNlcjpwdw=="}))
    _invalid(_offer(client, "ek_" + "A" * 43), "unknown or revoked token")
    _invalid(client.get(NO_SUCH, headers={"Authorization": "Bearer a b"}),
             "malformed bearer token")
    assert Session.objects.count() == 0


def test_preflight_and_the_region_list_need_no_token(client: Client) -> None:
    response = client.options("/v1/sessions", HTTP_ORIGIN="https://app.example",
                              HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 200
    assert "Authorization" in response["Access-Control-Allow-Headers"]
    assert client.get("/v1/regions").status_code == 200


def test_an_api_key_passes(client: Client) -> None:
    _, key = apikey_create(name="server")
    _problem(_offer(client, key), 503, "no_capacity")  # authorized; no fleet to place on
    _problem(client.get(NO_SUCH, headers=_bearer(key)), 404, "not_found")


# client secrets ----------------------------------------------------------------------------------

def test_client_secret_default_and_chosen_lifetimes(client: Client) -> None:
    _, key = apikey_create(name="server")
    for body, seconds in ((None, 600), ({"expires_after": {"seconds": 10}}, 10),
                          ({"expires_after": {"anchor": "created_at", "seconds": 7200}}, 7200)):
        before = int(timezone.now().timestamp())
        response = _mint(client, key, body)
        assert response.status_code == 200, response.content
        minted = json.loads(response.content)
        assert set(minted) == {"value", "expires_at"} and minted["value"].startswith("ecs_")
        assert before + seconds <= minted["expires_at"] <= before + seconds + 2
        stored = ClientSecret.objects.get(secret_hash=hash_token(minted["value"]))
        assert stored.api_key.name == "server"
    _problem(_offer(client, minted["value"]), 503, "no_capacity")  # it creates sessions


@pytest.mark.parametrize("body", [
    {"expires_after": {"seconds": 9}}, {"expires_after": {"seconds": 7201}},
    {"expires_after": {"seconds": "60"}}, {"expires_after": {"seconds": True}},
    {"expires_after": 60}, {"expires_after": {"anchor": "now", "seconds": 60}}, [1],
])
def test_bad_client_secret_requests_are_400(client: Client, body: object) -> None:
    _, key = apikey_create(name="server")
    _problem(_mint(client, key, body), 400, "bad_request")
    assert ClientSecret.objects.count() == 0


def test_a_client_secret_cannot_mint_secrets(client: Client) -> None:
    _, key = apikey_create(name="server")
    secret = json.loads(_mint(client, key).content)["value"]
    body = _problem(_mint(client, secret), 403, "api_key_required")
    assert "API key" in body["detail"]


def test_an_expired_client_secret_cannot_create_a_session(client: Client) -> None:
    _, key = apikey_create(name="server")
    secret = json.loads(_mint(client, key, {"expires_after": {"seconds": 10}}).content)["value"]
    ClientSecret.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    _invalid(_offer(client, secret), "client secret expired")
    assert Session.objects.count() == 0


# revocation, regions, per-key limits -------------------------------------------------------------

def test_a_revoked_key_and_its_secrets_stop_at_once(client: Client) -> None:
    _, key = apikey_create(name="server")
    secret = json.loads(_mint(client, key).content)["value"]
    _problem(_offer(client, key), 503, "no_capacity")
    _problem(_offer(client, secret), 503, "no_capacity")
    apikey_revoke(name="server")
    _invalid(_offer(client, key), "unknown or revoked token")
    _invalid(_offer(client, secret), "unknown or revoked token")
    _invalid(_mint(client, key), "unknown or revoked token")


def test_a_region_restricted_key_may_not_offer_elsewhere(client: Client) -> None:
    make_region("us-east")
    _, key = apikey_create(name="eu", region_code="local")
    secret = json.loads(_mint(client, key).content)["value"]
    for token in (key, secret):
        body = _problem(_offer(client, token, "?region=us-east"), 403, "region_forbidden")
        assert "local" in body["detail"]
        _problem(_offer(client, token, "?region=local"), 503, "no_capacity")
        _problem(_offer(client, token), 503, "no_capacity")


def test_the_per_key_rate_limit_counts_the_key_and_its_secrets(
    client: Client, settings: Settings
) -> None:
    settings.RATE_LIMIT_PER_MINUTE, settings.RATE_LIMIT_BURST = 6000, 100  # per address: ample
    _, key = apikey_create(name="limited", rate_limit_per_minute=2)
    _, other = apikey_create(name="unlimited")
    secret = json.loads(_mint(client, key).content)["value"]
    _problem(_offer(client, key), 503, "no_capacity")
    _problem(_offer(client, secret), 503, "no_capacity")
    refused = _problem(_offer(client, secret), 429, "rate_limited")
    assert "limited" in refused["detail"]
    _problem(_offer(client, other), 503, "no_capacity")


# ownership, on a live fleet ---------------------------------------------------------------------

async def _amint(client: AsyncClient, key: str) -> str:
    response = await client.post("/v1/client_secrets", data="", content_type="application/json",
                                 headers=_bearer(key))
    return str(json.loads(response.content)["value"])


@pytest.mark.django_db(transaction=True)
async def test_one_token_cannot_end_another_tokens_session(redis_url: str) -> None:
    offer = await browser_offer()
    _, key = await sync_to_async(apikey_create)(name="server")
    _, stranger = await sync_to_async(apikey_create)(name="stranger")
    async with live_fleet(redis_url, capacity=10):
        client = AsyncClient()
        mine, sibling = await _amint(client, key), await _amint(client, key)
        created = await client.post("/v1/sessions", data=offer, content_type="application/sdp",
                                    headers=_bearer(mine))
        assert created.status_code == 201, created.content
        where = created["Location"]
        for other in (sibling, stranger):
            _problem(await client.delete(where, headers=_bearer(other)), 403, "not_owner")
            _problem(await client.get(where, headers=_bearer(other)), 403, "not_owner")
            _problem(await client.patch(where, data="a=end-of-candidates\r\n",
                                        content_type=TRICKLE,
                                        headers={**_bearer(other), "If-Match": created["ETag"]}),
                     403, "not_owner")
        _unauthorized(await client.delete(where))
        own = await client.patch(where, data="a=end-of-candidates\r\n", content_type=TRICKLE,
                                 headers={**_bearer(mine), "If-Match": created["ETag"]})
        assert own.status_code == 204
        assert json.loads((await client.get(where, headers=_bearer(mine))).content)["state"] \
            in ("answered", "connected")
        assert (await client.delete(where, headers=_bearer(key))).status_code == 200  # its key
        session = await Session.objects.select_related("api_key", "client_secret").aget()
        assert session.state == "ended" and session.api_key.name == "server"
        assert session.client_secret is not None
        assert session.client_secret.secret_hash == hash_token(mine)


@pytest.mark.django_db(transaction=True)
async def test_with_authentication_off_a_session_made_with_a_token_still_needs_it(
    redis_url: str, settings: Settings
) -> None:
    settings.AUTH_REQUIRED = False
    offer = await browser_offer()
    _, key = await sync_to_async(apikey_create)(name="server")
    async with live_fleet(redis_url, capacity=10):
        client = AsyncClient()
        anonymous = await client.post("/v1/sessions", data=offer, content_type="application/sdp")
        assert anonymous.status_code == 201
        owned = await client.post("/v1/sessions", data=offer, content_type="application/sdp",
                                  headers=_bearer(key))
        assert owned.status_code == 201
        _unauthorized(await client.delete(owned["Location"]))
        assert (await client.delete(anonymous["Location"])).status_code == 200  # as before
        assert (await client.delete(owned["Location"], headers=_bearer(key))).status_code == 200


# the open demo -----------------------------------------------------------------------------------

def test_the_demo_endpoint_is_absent_unless_the_open_demo_is_on(
    client: Client, settings: Settings
) -> None:
    settings.DEMO_OPEN = False
    assert client.post("/demo/client_secret").status_code == 404
    assert ApiKey.objects.count() == 0


def test_the_open_demo_mints_secrets_per_address_within_its_limit(
    client: Client, settings: Settings
) -> None:
    settings.DEMO_OPEN, settings.DEMO_SECRETS_PER_MINUTE = True, 2
    minted = []
    for _ in range(2):
        response = client.post("/demo/client_secret")
        assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response
        minted.append(json.loads(response.content))
    assert minted[0]["value"] != minted[1]["value"]
    refused = _problem(client.post("/demo/client_secret"), 429, "rate_limited")
    assert "address" in refused["detail"]
    elsewhere = client.post("/demo/client_secret", headers={"X-Forwarded-For": "198.51.100.4"})
    assert elsewhere.status_code == 200  # another client address has its own bucket
    assert client.get("/demo/client_secret").status_code == 405
    _problem(_offer(client, minted[0]["value"]), 503, "no_capacity")  # authorized
    assert ApiKey.objects.get().name == "demo"
    apikey_revoke(name="demo")  # the operator closes the demo
    settings.DEMO_SECRETS_PER_MINUTE = 100
    _problem(client.post("/demo/client_secret", headers={"X-Forwarded-For": "198.51.100.5"}),
             403, "demo_closed")
    _invalid(_offer(client, minted[1]["value"]), "unknown or revoked token")


# staff only --------------------------------------------------------------------------------------

def test_api_keys_in_the_admin_are_staff_only_and_the_key_is_shown_once(client: Client) -> None:
    assert client.get("/admin/access/apikey/add/").status_code == 302  # to the login page
    staff = User.objects.create_superuser("ops", password="x" * 16)
    client.force_login(staff)
    response = client.post("/admin/access/apikey/add/",
                           {"name": "from-admin", "rate_limit_per_minute": "7"}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    key = ApiKey.objects.get(name="from-admin")
    token = next(word for m in shown for word in m.split() if word.startswith("ek_"))
    assert hash_token(token) == key.key_hash and key.rate_limit_per_minute == 7
    again = client.get(f"/admin/access/apikey/{key.pk}/change/")
    assert token not in again.content.decode()
    client.post("/admin/access/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
