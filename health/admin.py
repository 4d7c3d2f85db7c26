from __future__ import annotations

from django.contrib import admin

from health.models import NodeTransition


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
