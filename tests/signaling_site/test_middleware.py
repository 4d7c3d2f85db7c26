"""The inline middleware over Django's ASGI handler: no thread hop on an API request, the same
response headers as Django's stock classes, and the admin's session, CSRF and messages still
saved (on the request's thread, where they touch the database)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings
from django.utils.deprecation import MiddlewareMixin

from signaling_site import middleware, settings

pytestmark = pytest.mark.django_db(transaction=True)

STOCK = [
    "corsheaders.middleware.CorsMiddleware",
    *(f"{module}.{name}" for name, module in settings._STOCK_MIDDLEWARE.items()),
    "axes.middleware.AxesMiddleware",
]


def _hooks_hopped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the middleware hooks that go through ``sync_to_async`` from now on."""
    hopped: list[str] = []
    stock_init = SyncToAsync.__init__

    def init(self: SyncToAsync[Any, Any], func: Any, *args: Any, **kwargs: Any) -> None:
        owner = getattr(func, "__self__", None)
        if isinstance(owner, MiddlewareMixin):
            hopped.append(f"{type(owner).__name__}.{func.__name__}")
        stock_init(self, func, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__init__", init)
    return hopped


def test_every_stock_class_has_its_inline_twin() -> None:
    inline = [m for m in settings.MIDDLEWARE if m.startswith("signaling_site.middleware.")]
    assert len(inline) == len(settings._STOCK_MIDDLEWARE) == 7
    for path in inline:
        name = path.rsplit(".", 1)[1]
        cls = getattr(middleware, name)
        assert issubclass(cls, middleware.InlineHooks)
        stock = cls.__mro__[2]  # the stock class it wraps
        assert (stock.__module__, stock.__name__) == (settings._STOCK_MIDDLEWARE[name], name)


async def test_an_api_request_takes_no_thread_hop_and_gets_the_stock_headers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hopped = _hooks_hopped(monkeypatch)
    inline = await AsyncClient().get("/v1/regions", HTTP_ORIGIN="https://app.example")
    assert inline.status_code == 200 and hopped == []
    with override_settings(MIDDLEWARE=STOCK):
        stock = await AsyncClient().get("/v1/regions", HTTP_ORIGIN="https://app.example")
    assert len(hopped) >= 10  # what Django's own classes cost: the reason for ours
    assert stock.status_code == 200
    assert sorted(inline.headers.items()) == sorted(stock.headers.items())
    assert inline.headers["X-Frame-Options"] == "DENY"
    assert inline.headers["X-Content-Type-Options"] == "nosniff"


async def test_admin_login_over_asgi_saves_the_session_and_checks_csrf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    await User.objects.acreate_superuser("ops", password="pw-123-long")
    client = AsyncClient(enforce_csrf_checks=True)
    page = await client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"',
                      page.content.decode())
    assert token is not None
    refused = await AsyncClient(enforce_csrf_checks=True).post(
        "/admin/login/", {"username": "ops", "password": "pw-123-long"})
    assert refused.status_code == 403  # no CSRF token: the inline CSRF hook still refuses
    hopped = _hooks_hopped(monkeypatch)
    landed = await client.post("/admin/login/?next=/admin/", {
        "username": "ops", "password": "pw-123-long", "csrfmiddlewaretoken": token.group(1)})
    assert landed.status_code == 302 and landed["Location"] == "/admin/"
    assert "SessionMiddleware.process_response" in hopped  # modified: saved on the thread
    assert (await client.get("/admin/")).status_code == 200  # the saved session logs in


async def test_messages_are_stored_on_the_thread_and_shown_once() -> None:
    """A message added by a view (a staff action on the dashboard) survives the redirect."""
    from django.contrib import messages
    from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
    from django.urls import path

    def add(request: HttpRequest) -> HttpResponse:
        messages.info(request, "drained")
        return HttpResponseRedirect("/show")

    def show(request: HttpRequest) -> HttpResponse:
        return HttpResponse("|".join(str(m) for m in messages.get_messages(request)))

    urls = type("urls", (), {"urlpatterns": [path("add", add), path("show", show)]})
    with override_settings(ROOT_URLCONF=urls):
        client = AsyncClient()
        await client.get("/add")
        assert (await client.get("/show")).content == b"drained"
        assert (await client.get("/show")).content == b""


def test_csrf_view_hook_is_the_stock_one_on_sync_requests() -> None:
    """WSGI and the sync test client keep the stock (synchronous) view hook; an ASGI request
    gets the coroutine that checks tokens on the request's thread."""
    import inspect

    from django.http import HttpResponse

    def sync_view(request: Any) -> HttpResponse:
        return HttpResponse()

    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse()

    sync = middleware.CsrfViewMiddleware(sync_view)
    assert not inspect.iscoroutinefunction(sync.process_view)
    assert inspect.iscoroutinefunction(middleware.CsrfViewMiddleware(async_view).process_view)
