"""``fleet.startup``: what a process made while starting stays out of the collector's walks."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap


def test_freezing_moves_startup_objects_out_of_every_generation() -> None:
    """In a fresh interpreter (freezing is for good): after Django and aiortc load, the
    collector tracks ~10^5 objects; once frozen, a full collection walks almost none of them
    and what was frozen is still alive."""
    script = textwrap.dedent("""
        import gc, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "signaling_site.settings"
        import django; django.setup()
        import aiortc, calls.views, transceivers.sessions
        keep = {"settings": django.conf.settings.INSTALLED_APPS}
        before = len(gc.get_objects())
        from fleet.startup import freeze_startup_objects
        frozen = freeze_startup_objects()
        after = len(gc.get_objects())
        print(before, frozen, after, gc.get_freeze_count() > 0.99 * frozen, bool(keep["settings"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    before, frozen, after = (int(x) for x in out[:3])
    assert before > 50_000 and frozen >= before * 0.9
    assert after < 1_000  # what a collection still walks: only what is made from now on
    assert out[3:] == ["True", "True"]
    assert gc.get_freeze_count() == 0  # this (test) process untouched
