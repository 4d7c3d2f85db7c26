from __future__ import annotations

from django.contrib import admin

from calls.models import Session


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = (
        "id", "state", "region", "region_reason", "relay", "transceiver", "client_ip",
        "created_at", "connected_at", "ended_at",
    )
    list_filter = ("state", "region", "transceiver")
    search_fields = ("id", "ufrag", "client_ip")
    list_select_related = ("region", "relay", "transceiver")
    readonly_fields = (
        "id", "ufrag", "etag", "created_at", "answered_at", "connected_at", "ended_at",
    )
    date_hierarchy = "created_at"
