"""The one place that reads the process environment (STYLE rule 10)."""

from __future__ import annotations

import os


def env_str(name: str, default: str) -> str:
    """Return ``$name`` or ``default`` (empty counts as unset)."""
    return os.environ.get(name) or default


def env_int(name: str, default: int) -> int:
    return int(env_str(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(env_str(name, str(default)))


def env_bool(name: str, default: bool) -> bool:
    return env_str(name, "1" if default else "0").lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment plus ``overrides``, for the children ``manage.py up`` starts."""
    return {**os.environ, **overrides}
