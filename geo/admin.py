from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from geo.models import Region
from geo.services import regions_set_enabled


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "latitude", "longitude", "enabled", "is_default")
    list_editable = ("enabled",)
    list_filter = ("enabled", "is_default")
    search_fields = ("code", "name")
    actions = ("enable_regions", "disable_regions")

    @admin.action(description="Enable selected regions")
    def enable_regions(self, request: HttpRequest, queryset: QuerySet[Region]) -> None:
        changed = regions_set_enabled(codes=queryset.values_list("code", flat=True), enabled=True)
        self.message_user(request, f"{changed} region(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected regions")
    def disable_regions(self, request: HttpRequest, queryset: QuerySet[Region]) -> None:
        changed = regions_set_enabled(codes=queryset.values_list("code", flat=True), enabled=False)
        self.message_user(request, f"{changed} region(s) disabled.", messages.SUCCESS)
