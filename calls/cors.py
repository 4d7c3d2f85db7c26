"""The API's method handling: each view answers only its methods, plain ``OPTIONS`` (WHIP's
``Accept-Post``) and 405 for the rest. CORS itself (preflights, allowed origins, the headers a
page may read) is django-cors-headers' middleware, configured in settings (``CORS_*``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from django.http import HttpRequest, HttpResponse

from calls.problems import problem

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponse]]


def options(methods: str, accept_post: str | None = None) -> HttpResponse:
    """A plain ``OPTIONS`` (no CORS preflight, which the middleware answers): 204 with the
    methods and, where given, the media types POST takes (``Accept-Post``, RFC 9725 §4.2)."""
    response = HttpResponse(status=204)
    if accept_post is not None:
        response["Accept-Post"] = accept_post
    response["Allow"] = methods
    return response


def api_view(
    *methods: str, accept_post: str | None = None
) -> Callable[[AsyncView], AsyncView]:
    """An async API view answering only ``methods`` (+ OPTIONS), 405 problem+json with
    ``Allow`` for any other method (RFC 9110 §15.5.6), no CSRF (no cookies are used: callers
    authenticate per request). ``accept_post``: see ``options``."""
    allow = ", ".join((*methods, "OPTIONS"))

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method == "OPTIONS":
                return options(allow, accept_post)
            if request.method not in methods:
                response = problem(405, f"use {allow}", code="method_not_allowed")
                response["Allow"] = allow
                return response
            return await view(request, *args, **kwargs)

        wrapped.csrf_exempt = True  # type: ignore[attr-defined]
        wrapped.api_methods = (*methods, "OPTIONS")  # type: ignore[attr-defined]  # docs test
        return wrapped

    return decorate
