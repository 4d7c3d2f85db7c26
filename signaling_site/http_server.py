"""``python -m signaling_site.http_server``: daphne with limits enforced while a request arrives.

Twisted buffers a whole request body before daphne hands it to the ASGI app (and daphne then
queues all of it in memory), so a 1 GiB upload costs 1 GiB before any middleware runs. Here the
request refuses an oversized declared or streamed body at once (413, RFC 9110 §15.5.14), headers
and body must arrive within deadlines (slow-loris), and each peer address may hold only so many
connections (trusted proxies exempt). Everything else is daphne's own command line.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from twisted.internet import reactor as twisted_reactor
from twisted.internet.base import DelayedCall
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http

from calls.problems import PROBLEM_TYPE, problem_body
from fleet.startup import freeze_startup_objects

logger = logging.getLogger(__name__)
reactor: Any = twisted_reactor  # the module stands in for the reactor; its stub types poorly


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_body: int  # bytes of request body, declared or streamed
    header_timeout: float  # seconds from connect until a request's headers are complete
    body_timeout: float  # seconds from the headers until the whole body has arrived
    idle_timeout: float  # seconds a keep-alive connection may sit idle
    max_per_address: int  # open connections per peer address (0: no cap)
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # trusted proxies


def limits_from_settings() -> HttpLimits:
    from django.conf import settings

    from geo.client_ip import get_trusted_proxies

    return HttpLimits(
        max_body=settings.MAX_REQUEST_BODY_BYTES, header_timeout=settings.HTTP_HEADER_TIMEOUT,
        body_timeout=settings.HTTP_BODY_TIMEOUT, idle_timeout=settings.HTTP_IDLE_TIMEOUT,
        max_per_address=settings.HTTP_MAX_CONNECTIONS_PER_ADDRESS,
        exempt=get_trusted_proxies(),
    )


def raw_problem(status: int, reason: str, detail: str, code: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    body = problem_body(status, detail, code=code)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {PROBLEM_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class LimitedRequest(WebRequest):  # type: ignore[misc]
    """daphne's request, refusing an oversized body before buffering it."""

    limits: HttpLimits
    _refused = False
    _received = 0
    _body_deadline: DelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        self.channel.headers_done = True
        if length is not None and length > self.limits.max_body:
            self._refuse()
            return
        self._body_deadline = reactor.callLater(self.limits.body_timeout, self._body_late)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.limits.max_body:  # chunked: no length was declared
            self._refuse()
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        # The whole request is in (twisted pauses the idle timeout until the response is done;
        # an upgraded WebSocket never finishes one, so it outlives the idle timeout).
        self._cancel_deadline()
        return super().process()

    def _refuse(self) -> None:
        self._refused = True
        self._cancel_deadline()
        detail = f"request body larger than {self.limits.max_body} bytes"
        self.channel.transport.write(raw_problem(413, "Content Too Large", detail, "too_large"))
        self.channel.loseConnection()

    def _body_late(self) -> None:
        self._body_deadline = None
        logger.info("closing %s: body not complete in %gs", self.client, self.limits.body_timeout)
        self._refused = True
        self.channel.transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._body_deadline is not None and self._body_deadline.active():
            self._body_deadline.cancel()
        self._body_deadline = None

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        if self._refused:  # never reached daphne's application bookkeeping
            http.Request.connectionLost(self, reason)
            return
        super().connectionLost(reason)


class GuardProtocol(ProtocolWrapper):  # type: ignore[misc]
    """Closes a connection whose first request's headers are not complete in time."""

    factory: GuardFactory
    _deadline: DelayedCall | None = None
    _tail = b""

    def makeConnection(self, transport: Any) -> None:
        self._deadline = reactor.callLater(self.factory.limits.header_timeout, self._late)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:  # end of the header block (RFC 9112 §2.1)
                self._stop_deadline()
            self._tail = seen[-3:]
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _late(self) -> None:
        self._deadline = None
        logger.info("closing %s: headers not complete in %gs", self.getPeer(),
                    self.factory.limits.header_timeout)
        if self.transport is not None:
            self.transport.abortConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


class GuardFactory(WrappingFactory):  # type: ignore[misc]
    """Wraps daphne's HTTP factory: header deadline, and a cap on connections per address."""

    protocol = GuardProtocol

    def __init__(self, wrapped: Any, limits: HttpLimits) -> None:
        super().__init__(wrapped)
        self.limits = limits
        self.per_address: Counter[str] = Counter()

    def _exempt(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.limits.exempt)

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", ""))
        cap = self.limits.max_per_address
        if cap and self.per_address[host] >= cap and not self._exempt(host):
            logger.info("refusing a connection from %s: %d open", host, cap)
            return None  # twisted closes the socket at once
        self.per_address[host] += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        host = str(getattr(protocol.getPeer(), "host", ""))
        self.per_address[host] -= 1
        if self.per_address[host] <= 0:
            del self.per_address[host]


class LimitedHTTPFactory(HTTPFactory):  # type: ignore[misc]
    """daphne's factory with ``LimitedRequest`` and a keep-alive idle timeout."""

    def __init__(self, server: Server, limits: HttpLimits) -> None:
        super().__init__(server)
        self.timeOut = limits.idle_timeout
        self.request_class = type("BoundLimitedRequest", (LimitedRequest,), {"limits": limits})

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = self.request_class
        return protocol


class LimitedServer(Server):  # type: ignore[misc]
    """daphne's server listening through ``GuardFactory(LimitedHTTPFactory)``.

    ``Server.run`` builds its factory and listens with it in one method, so the attribute it
    assigns is replaced on the way in.
    """

    _factory: Any = None

    @property
    def http_factory(self) -> Any:
        return self._factory

    @http_factory.setter
    def http_factory(self, daphne_factory: Any) -> None:
        limits = limits_from_settings()
        self._factory = GuardFactory(LimitedHTTPFactory(self, limits), limits)

    def run(self) -> None:
        """Import every view (Django resolves its URL patterns lazily, on the first request),
        take what starting made out of the collector's walks (``fleet.startup``), serve."""
        from django.urls import get_resolver

        get_resolver().url_patterns  # noqa: B018  # the import is the point
        freeze_startup_objects()
        super().run()


class LimitedCommandLine(CommandLineInterface):  # type: ignore[misc]
    server_class = LimitedServer


if __name__ == "__main__":
    LimitedCommandLine.entrypoint()
