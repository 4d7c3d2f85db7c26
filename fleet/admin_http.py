"""A tiny HTTP admin endpoint for the daemons: ``GET /livez``, ``GET /readyz``, ``GET /metrics``.

``/livez`` answers 200 while the event loop runs (an orchestrator restarts the process when it
stops answering); ``/readyz`` answers 200 only while the node takes new sessions, 503 (the body
says why) while it is draining, starting or cut off from Redis, so an orchestrator can take a node
out of service without killing its calls. ``/metrics`` serves the daemon's Prometheus registry
(404 when the daemon has none).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from fleet.addresses import Addr
from fleet.metrics import CONTENT_TYPE, exposition

MAX_REQUEST = 4096
MAX_HEADER_LINES = 100
REQUEST_TIMEOUT = 5.0  # seconds to send the request line and headers


async def _skip_headers(reader: asyncio.StreamReader) -> None:
    """Read (and ignore) the request's header lines up to the blank line, a bounded number."""
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return


def _http(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body


def metrics_response(registry: CollectorRegistry) -> bytes:
    """``/metrics``: 200 with the registry in the Prometheus text format."""
    return _http("200 OK", exposition(registry), CONTENT_TYPE)


def response(path: str, ready: bool, reason: str = "draining") -> bytes:
    """The full HTTP/1.0 response for ``path``; ``reason`` is the 503 body of ``/readyz``."""
    if path == "/livez":
        status, body = "200 OK", "ok\n"
    elif path == "/readyz":
        status, body = ("200 OK", "ready\n") if ready else ("503 Service Unavailable",
                                                            f"{reason}\n")
    else:
        status, body = "404 Not Found", "not found\n"
    return _http(status, body.encode())


async def serve_admin(
    addr: Addr, *, ready: Callable[[], bool], reason: Callable[[], str] | None = None,
    registry: CollectorRegistry | None = None,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> asyncio.Server:
    """Listen on ``addr`` and answer /livez, /readyz (``reason()`` says why not ready) and, with a
    ``registry``, /metrics (``before_scrape`` refreshes what collectors read); the caller closes
    the server."""

    async def answer(path: str) -> bytes:
        if path == "/metrics" and registry is not None:
            if before_scrape is not None:
                await before_scrape()
            return metrics_response(registry)
        is_ready = ready()
        why = "draining" if is_ready or reason is None else reason()
        return response(path, is_ready, why)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
                await _skip_headers(reader)  # closing with unread input would reset the reply
            parts = line[:MAX_REQUEST].decode("latin-1").split()
            path = (parts[1] if len(parts) >= 2 else "").split("?", 1)[0]
            writer.write(await answer(path))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):  # ValueError: a line over the limit
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, addr[0], addr[1])
