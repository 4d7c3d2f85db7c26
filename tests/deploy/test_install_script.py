"""deploy/image/install.sh copies every package the settings load (a new Django app that it
leaves out would pass here only to fail in the image)."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_image_gets_every_project_app() -> None:
    script = (ROOT / "deploy" / "image" / "install.sh").read_text()
    loop = re.search(r"for item in (.*?); do", script, re.S)
    assert loop is not None
    copied = set(loop.group(1).replace("\\", " ").split())
    ours = {app.split(".")[0] for app in settings.INSTALLED_APPS
            if (ROOT / app.split(".")[0]).is_dir()}
    assert ours and ours <= copied, sorted(ours - copied)
    assert {"manage.py", "templates", "static"} <= copied
