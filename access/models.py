"""API keys (long-lived, for servers) and the client secrets they mint (short-lived, for
browsers). Only hashes of the tokens are stored (``access.tokens``)."""

from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models


class ApiKey(models.Model):
    name = models.CharField(
        max_length=64, unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "letters, digits, _ . -")],
    )
    prefix = models.CharField(max_length=16, help_text="the token's first characters")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    region = models.ForeignKey(
        "geo.Region", null=True, blank=True, on_delete=models.PROTECT, related_name="api_keys",
        help_text="sessions only in this region (empty: any)",
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="offers per minute for this key and its client secrets (empty: no key limit)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rate_limit_per_minute__isnull=True)
                | models.Q(rate_limit_per_minute__gte=1),
                name="apikey_rate_limit_positive",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ClientSecret(models.Model):
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="client_secrets")
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"client secret {self.pk} of {self.api_key_id}"
