"""Requests' synchronous parts on long-lived threads: one thread per request, the same threads
from request to request, and requests in flight at once on different threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.test import override_settings

from signaling_site.request_threads import PooledThreadsASGIHandler, get_asgi_application


def _scope(path: str = "/no-such-page") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}


async def _get(app: ASGIHandler) -> int:
    communicator = ApplicationCommunicator(app, _scope())
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    await communicator.receive_output(10)  # the body
    await communicator.wait(10)
    return int(start["status"])


@pytest.fixture
def started_on() -> Iterator[list[threading.Thread]]:
    """The thread each request's synchronous ``request_started`` receivers ran on."""
    threads: list[threading.Thread] = []

    def record(**_: Any) -> None:
        threads.append(threading.current_thread())

    request_started.connect(record)
    yield threads
    request_started.disconnect(record)


async def test_requests_reuse_their_threads(started_on: list[threading.Thread]) -> None:
    app = PooledThreadsASGIHandler(threads=2)
    assert [await _get(app) for _ in range(3)] == [404, 404, 404]
    assert len({t.ident for t in started_on}) == 1  # idle pool: the least busy is the first
    assert started_on[0].name.startswith("request-0") and started_on[0].is_alive()


async def test_requests_in_flight_together_run_side_by_side(
        started_on: list[threading.Thread]) -> None:
    both_in = threading.Barrier(2, timeout=5)  # broken if the two shared one thread

    def meet(**_: Any) -> None:
        both_in.wait()

    request_started.connect(meet)
    try:
        app = PooledThreadsASGIHandler(threads=2)
        assert await asyncio.gather(_get(app), _get(app)) == [404, 404]
    finally:
        request_started.disconnect(meet)
    assert len({t.ident for t in started_on}) == 2


def test_zero_threads_is_djangos_own_handler() -> None:
    with override_settings(REQUEST_THREADS=0):
        app = get_asgi_application()
    assert type(app) is ASGIHandler
    with override_settings(REQUEST_THREADS=3):
        pooled = get_asgi_application()
    assert isinstance(pooled, PooledThreadsASGIHandler) and len(pooled._executors) == 3
    with pytest.raises(ValueError, match="at least one"):
        PooledThreadsASGIHandler(0)
