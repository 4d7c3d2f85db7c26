"""Redis frozen (SIGSTOP) or gone: offers and /v1/regions answer 503 problem+json fast, and
/healthz says which backing service is down."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from geo.services import region_ensure_default
from signaling_site.redis_server import free_port, start_embedded_redis
from tests.calls.test_sdp import OFFER

logger = logging.getLogger(__name__)
pytestmark = [pytest.mark.django_db(transaction=True)]
BUDGET = 1.0  # seconds to a 503 with Redis unreachable


@pytest.fixture
def frozen_redis(tmp_path: Path, settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real redis-server that stops answering (SIGSTOP) while its socket stays open."""
    proc, url = start_embedded_redis(tmp_path / "redis")
    settings.REDIS_URL = url
    region_ensure_default()
    os.kill(proc.pid, signal.SIGSTOP)
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def _unavailable(response: object, started: float) -> float:
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["code"] == "unavailable"
    assert int(response["Retry-After"]) > 0  # type: ignore[index]
    assert elapsed < BUDGET, f"{elapsed:.2f}s"
    logger.info("503 after %.3f s", elapsed)
    return elapsed


@pytest.mark.usefixtures("frozen_redis")
async def test_frozen_redis_offer_and_regions_are_503_within_a_second() -> None:
    client = AsyncClient()
    started = time.monotonic()
    response = await client.post("/v1/sessions", data=OFFER, content_type="application/sdp")
    _unavailable(response, started)
    started = time.monotonic()
    _unavailable(await client.get("/v1/regions"), started)


async def test_closed_redis_port_offer_is_503(settings: Settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    await _setup()
    started = time.monotonic()
    response = await AsyncClient().post("/v1/sessions", data=OFFER,
                                        content_type="application/sdp")
    _unavailable(response, started)


async def _setup() -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(region_ensure_default)()


@pytest.mark.usefixtures("frozen_redis")
def test_healthz_names_the_service_that_is_down(client: object) -> None:
    started = time.monotonic()
    response = client.get("/healthz")  # type: ignore[attr-defined]
    assert time.monotonic() - started < BUDGET
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "unavailable", "db": "ok", "redis": "down"}


def test_healthz_ok(client: object, redis_url: str, settings: Settings) -> None:
    response = client.get("/healthz")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok", "db": "ok", "redis": "ok"}
