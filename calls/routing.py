"""WebSocket routes (session events, dashboard)."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
