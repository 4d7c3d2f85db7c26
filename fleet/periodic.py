"""One way to run background work on a timer: a fixed interval, exponential backoff on errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

MIN_BACKOFF = 0.1  # seconds: the first retry after an error when the interval is shorter
MAX_BACKOFF = 5.0  # seconds: the longest wait between retries


def next_delay(delay: float, *, interval: float, failed: bool,
               max_backoff: float = MAX_BACKOFF) -> float:
    """The wait before the next run: ``interval`` after a success, else double (bounded)."""
    if not failed:
        return interval
    return min(max(delay * 2, MIN_BACKOFF), max(max_backoff, interval))


async def every(
    interval: float, work: Callable[[], Awaitable[None]], *,
    errors: tuple[type[BaseException], ...], stopping: Callable[[], bool],
    on_error: Callable[[BaseException], None], max_backoff: float = MAX_BACKOFF,
    on_lag: Callable[[float], None] | None = None,
) -> None:
    """Sleep, run ``work``, repeat until ``stopping()``; ``errors`` go to ``on_error`` and back
    off. ``on_lag`` gets how late each wake-up was (event loop lag), in seconds."""
    loop = asyncio.get_running_loop()
    delay = interval
    while not stopping():  # redis-py may turn a cancel into a RedisError: stop anyway
        started = loop.time()
        await asyncio.sleep(delay)
        if on_lag is not None:
            on_lag(max(0.0, loop.time() - started - delay))
        try:
            await work()
        except errors as exc:
            on_error(exc)
            delay = next_delay(delay, interval=interval, failed=True, max_backoff=max_backoff)
        else:
            delay = interval
