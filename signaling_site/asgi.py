"""ASGI entry point for daphne: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest
from django.http.response import HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")

from signaling_site.request_threads import get_asgi_application  # noqa: E402


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's static handler, answering a path that escapes ``static/`` (``/static/../x``)
    like Django answers any SuspiciousOperation (400), not with an unhandled exception."""

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        try:
            return await super().get_response_async(request)
        except SuspiciousOperation as exc:
            return await sync_to_async(response_for_exception, thread_sensitive=False)(
                request, exc
            )


# /static/ is served from STATICFILES_DIRS by the same daphne, DEBUG or not (no CDN, no nginx).
django_asgi_app = StaticFilesHandler(get_asgi_application())

from django.conf import settings  # noqa: E402

from signaling_site.http_limits import BodyLimitMiddleware  # noqa: E402

# Bodies over the limit get 413 before Django reads them (any ASGI server; daphne itself is
# limited earlier by signaling_site.http_server).
limited_app = BodyLimitMiddleware(django_asgi_app, limit=settings.MAX_REQUEST_BODY_BYTES)

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from signaling_site.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {"http": limited_app, "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns))}
)
