from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from calls.models import LIVE_STATES
from transceivers.models import Transceiver


@admin.register(Transceiver)
class TransceiverAdmin(admin.ModelAdmin):
    list_display = (
        "transceiver_id", "region", "bind_address", "state", "state_reason", "state_changed_at",
        "live_sessions", "capacity", "load",
    )
    list_filter = ("state", "region")
    search_fields = ("transceiver_id", "bind_host")
    readonly_fields = ("created_at", "state_changed_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transceiver]:
        live = Count("sessions", filter=Q(sessions__state__in=LIVE_STATES))
        return super().get_queryset(request).select_related("region").annotate(live=live)

    @admin.display(description="bind address")
    def bind_address(self, obj: Transceiver) -> str:
        return f"{obj.bind_host}:{obj.bind_port}"

    @admin.display(description="live sessions", ordering="live")
    def live_sessions(self, obj: Transceiver) -> int:
        return int(getattr(obj, "live", 0))

    @admin.display(description="load")
    def load(self, obj: Transceiver) -> str:
        return f"{100 * getattr(obj, 'live', 0) / max(1, obj.capacity):.0f} %"
