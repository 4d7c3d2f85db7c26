"""WebSocket routes (session events, dashboard)."""

from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import URLPattern, path

from calls.consumers import SessionEventsConsumer
from dashboard.consumers import DashboardConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/sessions/<uuid:session_id>", SessionEventsConsumer.as_asgi()),
    # staff-only over the session cookie: refuse cross-site origins
    path("ws/dashboard", AllowedHostsOriginValidator(DashboardConsumer.as_asgi())),
]
