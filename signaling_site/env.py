"""The one place that reads the process environment (STYLE rule 10)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


def env_str(name: str, default: str) -> str:
    """Return ``$name`` or ``default`` (empty counts as unset)."""
    return os.environ.get(name) or default


def _cast(name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid {cast.__name__}") from None


def env_int(name: str, default: int) -> int:
    return _cast(name, default, int)


def env_float(name: str, default: float) -> float:
    return _cast(name, default, float)


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


_bool.__name__ = "boolean (1/0, true/false, yes/no, on/off)"


def env_bool(name: str, default: bool) -> bool:
    return _cast(name, default, _bool)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment plus ``overrides``, for the children ``manage.py up`` starts."""
    return {**os.environ, **overrides}
