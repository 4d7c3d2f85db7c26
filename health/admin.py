"""Admin for fleet nodes (relay shards, transceivers: health state, why, live sessions) and
their health history. Here, not in relays/ or transceivers/: it counts ``calls`` sessions."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from calls.models import LIVE_STATES
from fleet.addresses import format_addr
from health.models import NodeTransition
from relays.models import RelayShard
from transceivers.models import Transceiver


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
        return format_addr((obj.public_host, obj.public_port))

    @admin.display(description="live sessions", ordering="live")
    def live_sessions(self, obj: RelayShard) -> int:
        return int(getattr(obj, "live", 0))


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
        return format_addr((obj.bind_host, obj.bind_port))

    @admin.display(description="live sessions", ordering="live")
    def live_sessions(self, obj: Transceiver) -> int:
        return int(getattr(obj, "live", 0))

    @admin.display(description="load")
    def load(self, obj: Transceiver) -> str:
        return f"{100 * getattr(obj, 'live', 0) / max(1, obj.capacity):.0f} %"


@admin.register(NodeTransition)
class NodeTransitionAdmin(admin.ModelAdmin):
    list_display = ("at", "kind", "node_id", "from_state", "to_state", "reason")
    list_filter = ("kind", "to_state")
    search_fields = ("node_id", "reason")
    date_hierarchy = "at"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
