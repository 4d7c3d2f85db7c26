"""Local development secrets: ``manage.py up`` creates ``var/secrets.json`` once (mode 0600) and
hands the values to its children; settings only read them. A fleet sets SECRET_KEY and UFRAG_KEYS.
``var/`` also holds the SQLite database: ``make_private`` keeps it all owner-only.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

SECRETS_FILE = "secrets.json"
NAMES = ("SECRET_KEY", "UFRAG_KEYS")
WAIT_FOR_WRITER = 2.5  # seconds another process may take to finish writing the file


def fresh_secrets() -> dict[str, str]:
    """A new random Django secret and a one-key ufrag keyring (``kid:secret``)."""
    return {"SECRET_KEY": secrets.token_urlsafe(48), "UFRAG_KEYS": "1:" + secrets.token_urlsafe(32)}


def read_local_secrets(var_dir: Path) -> dict[str, str]:
    """The secrets ``up`` stored under ``var_dir``; empty when there are none (never writes)."""
    try:
        text = (var_dir / SECRETS_FILE).read_text()
    except FileNotFoundError:
        return {}
    if not text:
        return {}
    values = json.loads(text)
    return {name: str(values[name]) for name in NAMES if values.get(name)}


def ensure_local_secrets(var_dir: Path) -> dict[str, str]:
    """Load ``var_dir/secrets.json``, creating it (0600, exclusively) with fresh secrets first."""
    path = var_dir / SECRETS_FILE
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + WAIT_FOR_WRITER
        while not (values := read_local_secrets(var_dir)):  # another writer is mid-way
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} is empty or incomplete: delete it") from None
            time.sleep(0.05)
        return values
    values = fresh_secrets()
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


PRIVATE_UMASK = 0o077  # files this process and its children create: owner-only (0600 / 0700)


def make_private(var_dir: Path) -> None:
    """From now on create files owner-only, and make ``var_dir``'s existing database and
    secrets owner-only too (an older run may have left them world-readable)."""
    os.umask(PRIVATE_UMASK)
    var_dir.mkdir(parents=True, exist_ok=True)
    var_dir.chmod(0o700)
    for path in var_dir.glob("db.sqlite3*"):
        path.chmod(0o600)
    if (var_dir / SECRETS_FILE).exists():
        (var_dir / SECRETS_FILE).chmod(0o600)
