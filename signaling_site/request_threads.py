"""Django's ASGI handler on a fixed set of request threads.

Django runs each HTTP request under its own ``ThreadSensitiveContext``: the request's
synchronous parts (signal receivers, sync middleware, the view's ``sync_to_async`` steps) run
on one thread of their own, so concurrent requests do not queue behind each other. asgiref
makes that thread anew for every request (a one-worker ``ThreadPoolExecutor`` per context, shut
down when the request ends): a thread started, handed its first call, and joined per request,
~6 % of a signaling process's CPU under a stream of offers (py-spy, 2026-12-01).

``PooledThreadsASGIHandler`` gives each request one of ``REQUEST_THREADS`` long-lived
one-worker executors instead, the least busy (asgiref's ``ThreadSensitiveContext(executor=)``):
a request still has one thread for all its synchronous parts, and requests in flight on
different threads still run side by side; beyond that many at once, two requests share a
thread and take turns there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError("at least one request thread")
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"request-{i}")
                           for i in range(threads)]
        self._in_flight = [0] * threads

    def _least_busy(self) -> int:
        return min(range(len(self._executors)), key=self._in_flight.__getitem__)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        index = self._least_busy()
        self._in_flight[index] += 1
        try:
            async with ThreadSensitiveContext(executor=self._executors[index]):
                await self.handle(scope, receive, send)
        finally:
            self._in_flight[index] -= 1


def get_asgi_application() -> ASGIHandler:
    """``django.core.asgi.get_asgi_application`` on ``settings.REQUEST_THREADS`` threads (0:
    Django's own handler, a new thread per request)."""
    django.setup(set_prefix=False)
    from django.conf import settings

    if settings.REQUEST_THREADS == 0:
        return ASGIHandler()
    return PooledThreadsASGIHandler(settings.REQUEST_THREADS)
