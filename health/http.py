"""A tiny HTTP admin endpoint for the daemons: ``GET /livez`` and ``GET /readyz``.

``/livez`` answers 200 while the event loop runs (an orchestrator restarts the process when it
stops answering); ``/readyz`` answers 200 only while the node takes new sessions, 503 while it is
draining or starting, so an orchestrator can drain a node without killing its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from relays.framing import Addr

MAX_REQUEST = 4096


def response(path: str, ready: bool) -> bytes:
    """The full HTTP/1.0 response for ``path``."""
    if path == "/livez":
        status, body = "200 OK", "ok\n"
    elif path == "/readyz":
        status, body = ("200 OK", "ready\n") if ready else ("503 Service Unavailable", "draining\n")
    else:
        status, body = "404 Not Found", "not found\n"
    return (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}"
    ).encode()


async def serve_admin(addr: Addr, *, ready: Callable[[], bool]) -> asyncio.Server:
    """Listen on ``addr`` and answer /livez and /readyz; the caller closes the server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            parts = line[:MAX_REQUEST].decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            writer.write(response(path.split("?", 1)[0], ready()))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, addr[0], addr[1])
