"""WebSocket routes (session events, dashboard)."""

from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.conf import settings
from django.urls import URLPattern, path, re_path

from calls.consumers import SessionEventsConsumer
from dashboard.consumers import DashboardConsumer
from signaling_site.consumers import UnknownPathConsumer


class BrowserOriginValidator(OriginValidator):  # type: ignore[misc]
    """Same-site pages (ALLOWED_HOSTS) and origins CORS lists by name may open the socket; so
    may clients that send no Origin (not browsers, RFC 6455 §10.2). CORS's ``*`` does not count:
    browsers apply no CORS to WebSockets, so this check is the only one."""

    def __init__(self, application: Any) -> None:
        named = settings.CORS_ALLOWED_ORIGINS  # without "*" (CORS_ALLOW_ALL_ORIGINS)
        super().__init__(application, [*settings.ALLOWED_HOSTS, *named])

    def valid_origin(self, parsed_origin: Any) -> bool:
        return parsed_origin is None or bool(super().valid_origin(parsed_origin))


websocket_urlpatterns: list[URLPattern] = [
    path("ws/sessions/<uuid:session_id>", BrowserOriginValidator(SessionEventsConsumer.as_asgi())),
    # staff-only over the session cookie: refuse cross-site origins
    path("ws/dashboard", AllowedHostsOriginValidator(DashboardConsumer.as_asgi())),
    re_path(r"", UnknownPathConsumer.as_asgi()),  # last: anything else is refused cleanly
]
