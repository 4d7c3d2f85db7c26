"""The daemons' admin endpoint on loopback: /livez, /readyz, /metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from fleet.admin_http import serve_admin


async def get(port: int, path: str, headers: str = "") -> tuple[str, str, str]:
    """(status line, head, body) of one HTTP/1.0 request; ``headers`` are sent as written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return head.splitlines()[0], head, body


async def test_metrics_serves_the_registry_after_the_refresh() -> None:
    registry = CollectorRegistry()
    hits = Counter("test_hits", "scrapes seen by the refresh", registry=registry)

    async def refresh() -> None:
        hits.inc()

    server = await serve_admin(("127.0.0.1", 0), ready=lambda: True, registry=registry,
                               before_scrape=refresh)
    port = server.sockets[0].getsockname()[1]
    try:
        # many header lines, as Prometheus sends: all read before the reply (no reset)
        status, head, body = await get(port, "/metrics?x=1", "Accept: text/plain\r\n" * 50)
        assert status == "HTTP/1.0 200 OK"
        assert "Content-Type: text/plain; version=" in head
        samples = {s.name: s.value for f in text_string_to_metric_families(body)
                   for s in f.samples}
        assert samples["test_hits_total"] == 1.0
        assert (await get(port, "/metrics"))[2].count("test_hits_total 2.0") == 1
        assert (await get(port, "/livez"))[0] == "HTTP/1.0 200 OK"
    finally:
        server.close()


async def test_no_registry_no_metrics_and_readyz_unchanged() -> None:
    server = await serve_admin(("127.0.0.1", 0), ready=lambda: False, reason=lambda: "draining")
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await get(port, "/metrics"))[0] == "HTTP/1.0 404 Not Found"
        status, _, body = await get(port, "/readyz")
        assert (status, body) == ("HTTP/1.0 503 Service Unavailable", "draining\n")
    finally:
        server.close()
