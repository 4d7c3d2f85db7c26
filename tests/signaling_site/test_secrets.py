"""Secrets: settings only read them; ``up`` creates ``var/secrets.json`` (0600) once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from signaling_site.secrets import ensure_local_secrets, read_local_secrets

ROOT = Path(__file__).resolve().parents[2]


def test_importing_settings_writes_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "UFRAG_KEYS")}
    env.update(EDGE_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="signaling_site.settings")
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(len(settings.SECRET_KEY) > 40, len(settings.UFRAG_KEYRING))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "1"]
    assert not var.exists()


def test_up_creates_the_file_once_private_and_settings_read_it(tmp_path: Path) -> None:
    assert read_local_secrets(tmp_path) == {} and not list(tmp_path.iterdir())
    first = ensure_local_secrets(tmp_path)
    assert set(first) == {"SECRET_KEY", "UFRAG_KEYS"} and first["UFRAG_KEYS"].startswith("1:")
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert ensure_local_secrets(tmp_path) == first == read_local_secrets(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "UFRAG_KEYS")}
    env.update(EDGE_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="signaling_site.settings")
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.UFRAG_KEYS)")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == first["UFRAG_KEYS"]
