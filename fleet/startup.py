"""What a long-running process does once it has started: take what starting made out of the
garbage collector's way.

CPython's full (generation 2) collection walks every container object the process tracks.
Once Django, Channels, aiortc and PyAV are imported a process tracks ~137,000, and one full
walk took 75-88 ms here (2026-12-01, this VM): a stall of every request on a signaling process
(one inside a 200-offer benchmark run puts its p99 near 100 ms) and of every call's audio on a
transceiver. Nearly all of those objects live as long as the process (modules, classes,
functions, settings, URL patterns); ``gc.freeze()`` moves them to a permanent generation that
collections skip (after the same walk: 0.0 ms), which is what Python's documentation suggests
for objects created at startup and Instagram did for its Django workers.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect what starting left as garbage, then exempt every object alive now from future
    collections; the number of objects frozen. Call once, when the process has finished
    starting (imports done, configuration read) and before it serves or forks workers (they
    then share the frozen objects' pages: collections in them never write to those)."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("froze %d startup objects", frozen)
    return frozen
