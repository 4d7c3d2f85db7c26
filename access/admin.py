"""API keys in the admin: create one (its raw key is shown once, on the page after saving),
revoke selected ones; keys are revoked, never deleted (sessions keep pointing at them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from access.models import ApiKey, ClientSecret
from access.services import apikey_create, apikey_revoke


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "region", "rate_limit_per_minute", "created_at",
                    "revoked_at")
    list_filter = ("region",)
    search_fields = ("name", "prefix")
    fields = ("name", "region", "rate_limit_per_minute", "prefix", "created_at", "revoked_at")
    actions = ("revoke",)

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiKey | None = None
    ) -> tuple[str, ...]:
        base = ("prefix", "created_at", "revoked_at")
        return (*base, "name") if obj is not None else base

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if change:  # region and rate limit may change; the key itself never does
            super().save_model(request, obj, form, change)
            return
        key, token = apikey_create(
            name=obj.name, region_code=obj.region.code if obj.region else None,
            rate_limit_per_minute=obj.rate_limit_per_minute,
        )
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        messages.warning(request, f"API key {key.name}: {token} (shown only now: store it)")

    @admin.action(description="Revoke selected API keys (and their client secrets)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = [key.name for key in queryset if apikey_revoke(name=key.name)]
        self.message_user(request, f"Revoked: {', '.join(revoked) or 'none'}.")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ClientSecret)
class ClientSecretAdmin(admin.ModelAdmin):
    list_display = ("id", "api_key", "created_at", "expires_at")
    list_filter = ("api_key",)
    list_select_related = ("api_key",)
    readonly_fields = ("api_key", "created_at", "expires_at")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # minted through the API only
