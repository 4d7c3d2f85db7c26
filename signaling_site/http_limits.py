"""Request-size limits for the ASGI app, before Django reads a byte of the body (RFC 9110
§15.5.14 413 Content Too Large): the declared Content-Length, then the bytes actually received."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from calls.problems import PROBLEM_TYPE, problem_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send); servers type these loosely


class BodyTooLarge(Exception):
    """More body bytes arrived than the limit allows."""


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; -1 when it is malformed; None when absent."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def send_problem(send: Send, status: int, detail: str, code: str) -> None:
    body = problem_body(status, detail, code=code)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", PROBLEM_TYPE.encode()), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


async def send_too_large(send: Send, limit: int) -> None:
    await send_problem(send, 413, f"request body larger than {limit} bytes", "too_large")


class BodyLimitMiddleware:
    """413 problem+json for HTTP requests whose body is (declared or streamed) over ``limit``."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared == -1:
            await send_problem(send, 400, "malformed Content-Length", "bad_request")
            return
        if declared is not None and declared > self.limit:
            await send_too_large(send, self.limit)
            return
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if not started:
                await send_too_large(send, self.limit)
