"""How a daemon waits out its life: until a stop signal, or until it has drained itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable


async def wait_until_stopped(
    drained: asyncio.Event, *, on_sigterm: Callable[[], None] | None = None
) -> None:
    """Return on SIGINT, on SIGTERM (unless ``on_sigterm`` handles it, e.g. to drain first),
    or once ``drained`` is set. Signal handlers exist only in the main thread: elsewhere
    (tests) this waits for ``drained`` or cancellation."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: on_sigterm or stop.set}
    handled = []
    for signum, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, handler)
            handled.append(signum)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(drained.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for signum in handled:
            loop.remove_signal_handler(signum)
