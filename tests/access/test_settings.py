"""``AUTH_REQUIRED`` and ``DEMO_OPEN``: production defaults in settings, local ones under ``up``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from signaling_site.management.commands.up import access_line, local_access_defaults

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("env", "expected"), [
    ({"DEBUG": "0"}, "True False"),  # production: keys required, no open demo
    ({"DEBUG": "1"}, "False False"),
    ({"DEBUG": "1", "AUTH_REQUIRED": "1", "DEMO_OPEN": "1"}, "True True"),
    ({"DEBUG": "0", "AUTH_REQUIRED": "0"}, "False False"),
])
def test_settings_defaults(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("AUTH_REQUIRED", "DEMO_OPEN")}
    code = "from django.conf import settings; print(settings.AUTH_REQUIRED, settings.DEMO_OPEN)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, timeout=60,
        check=True, env={**base, **env, "EDGE_VAR_DIR": str(tmp_path),
                         "DJANGO_SETTINGS_MODULE": "signaling_site.settings"},
    )
    assert result.stdout.strip() == expected


def test_up_turns_authentication_off_and_the_demo_on_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTH_REQUIRED", raising=False)
    monkeypatch.delenv("DEMO_OPEN", raising=False)
    assert local_access_defaults() == {"AUTH_REQUIRED": "0", "DEMO_OPEN": "1"}
    line = access_line(local_access_defaults())
    assert "authentication is OFF" in line and "AUTH_REQUIRED=1" in line
    assert "open demo on" in line
    monkeypatch.setenv("AUTH_REQUIRED", "1")
    monkeypatch.setenv("DEMO_OPEN", "0")
    assert local_access_defaults() == {}
    assert "authentication is ON" in access_line({"AUTH_REQUIRED": "1", "DEMO_OPEN": "0"})
