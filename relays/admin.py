from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from calls.models import LIVE_STATES
from relays.models import RelayShard


@admin.register(RelayShard)
class RelayShardAdmin(admin.ModelAdmin):
    list_display = (
        "shard_id", "region", "public_address", "state", "state_reason", "live_sessions",
        "state_changed_at",
    )
    list_filter = ("state", "region")
    search_fields = ("shard_id", "public_host")
    readonly_fields = ("created_at", "state_changed_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[RelayShard]:
        live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
        return super().get_queryset(request).select_related("region").annotate(live=live)

    @admin.display(description="public address")
    def public_address(self, obj: RelayShard) -> str:
        return f"{obj.public_host}:{obj.public_port}"

    @admin.display(description="live sessions", ordering="live")
    def live_sessions(self, obj: RelayShard) -> int:
        return int(getattr(obj, "live", 0))
