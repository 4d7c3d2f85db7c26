"""Regions: where relays and transceivers run, and where a caller is steered."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models


class Region(models.Model):
    code = models.CharField(
        max_length=32, unique=True, validators=[RegexValidator(r"^[a-z0-9][a-z0-9-]*$")]
    )
    name = models.CharField(max_length=100)
    latitude = models.FloatField(validators=[MinValueValidator(-90), MaxValueValidator(90)])
    longitude = models.FloatField(validators=[MinValueValidator(-180), MaxValueValidator(180)])
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="one_default_region",
            )
        ]

    def __str__(self) -> str:
        return self.code
