"""Offer admission: a token bucket per client in Redis (IPv6 by /64), a cap on each client's
unconnected sessions and on each transceiver's; a flood from one address leaves others served."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from calls.ratelimit import admit_offer, client_key
from geo.services import region_ensure_default
from tests.calls.live_fleet import browser_offer, live_fleet
from tests.calls.test_sdp import OFFER

logger = logging.getLogger(__name__)
pytestmark = [pytest.mark.django_db(transaction=True)]


def test_client_key_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::abcd")
    assert client_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key(None) == client_key("not an address") == "unknown"


def rate_limit_wait(*, key: str) -> float:
    return admit_offer(key=key, window=10.0).wait


def test_token_bucket_refills_continuously_not_per_window(
    redis_client: object, settings: Settings
) -> None:
    settings.RATE_LIMIT_PER_MINUTE, settings.RATE_LIMIT_BURST = 600, 5  # 10/s, 5 at once
    assert [rate_limit_wait(key="a") for _ in range(5)] == [0.0] * 5
    wait = rate_limit_wait(key="a")
    assert 0 < wait <= 0.11
    assert rate_limit_wait(key="b") == 0.0  # another client has its own bucket
    time.sleep(wait + 0.01)
    assert rate_limit_wait(key="a") == 0.0
    assert rate_limit_wait(key="a") > 0
    # Hammering for 1 s passes at most burst + rate x 1 s (a fixed window passed 2x at its edge).
    passed, deadline = 0, time.monotonic() + 1.0
    while time.monotonic() < deadline:
        passed += rate_limit_wait(key="c") == 0.0
    assert 5 + 9 <= passed <= 5 + 10 + 1, passed


def test_recent_offers_are_counted_for_admitted_ones_only(
    redis_client: object, settings: Settings
) -> None:
    settings.RATE_LIMIT_PER_MINUTE, settings.RATE_LIMIT_BURST = 60, 3
    assert [admit_offer(key="d", window=0.5).recent for _ in range(5)] == [1, 2, 3, 3, 3]
    time.sleep(0.6)
    assert admit_offer(key="d", window=0.5).recent == 0  # refused: no token yet, window empty
    time.sleep(0.5)  # 1 token/s: one more is admitted
    assert admit_offer(key="d", window=0.5).recent == 1


async def _post(client: AsyncClient, sdp: str, address: str) -> object:
    """An offer as it arrives through the trusted local proxy (peer 127.0.0.1 + XFF)."""
    return await client.post("/v1/sessions", data=sdp, content_type="application/sdp",
                             headers={"X-Forwarded-For": address})


async def test_one_ipv6_64_is_one_client(redis_client: object, settings: Settings) -> None:
    settings.RATE_LIMIT_PER_MINUTE, settings.RATE_LIMIT_BURST = 6, 3  # no refill during the test
    await asyncio.to_thread(region_ensure_default)
    client = AsyncClient()
    codes = [json.loads((await _post(client, OFFER, f"2001:db8:7:7::{i:x}")).content)["code"]
             for i in range(1, 30)]
    assert codes[:3] == ["no_capacity"] * 3  # admitted, then nowhere to go (no fleet)
    assert set(codes[3:]) == {"rate_limited"}, codes
    other = await _post(client, OFFER, "2001:db8:7:8::1")  # the next /64 is someone else
    assert json.loads(other.content)["code"] == "no_capacity"


async def test_unconnected_sessions_are_capped_per_client(
    redis_url: str, redis_client: object, settings: Settings
) -> None:
    settings.MAX_PENDING_PER_CLIENT = 2
    offer = await browser_offer()
    async with live_fleet(redis_url, capacity=20):
        client = AsyncClient()
        statuses = [(await _post(client, offer, "198.51.100.9")).status_code for _ in range(3)]
        assert statuses == [201, 201, 429]
        refused = await _post(client, offer, "198.51.100.9")
        body = json.loads(refused.content)
        assert body["code"] == "too_many_pending" and int(refused["Retry-After"]) > 0
        assert (await _post(client, offer, "198.51.100.10")).status_code == 201


async def test_transceiver_keeps_half_its_capacity_for_connecting_callers(
    redis_url: str, redis_client: object, settings: Settings
) -> None:
    settings.MAX_PENDING_PER_CLIENT = 100
    offer = await browser_offer()
    async with live_fleet(redis_url, capacity=6):
        client = AsyncClient()
        statuses = [(await _post(client, offer, f"198.51.100.{i}")).status_code
                    for i in range(1, 6)]
        assert statuses == [201, 201, 201, 503, 503]


async def _flood(client: AsyncClient, offer: str, stop: asyncio.Event, sent: list[int]) -> None:
    while not stop.is_set() and len(sent) < 400:
        sent.append((await _post(client, offer, "203.0.113.66")).status_code)


async def _legit(client: AsyncClient, offer: str, tries: int) -> int:
    served = 0
    for _ in range(tries):
        response = await _post(client, offer, "192.0.2.10")
        if response.status_code == 201:
            served += 1
            await client.delete(response["Location"])
        await asyncio.sleep(0.25)
    return served


async def test_flood_from_one_address_leaves_another_caller_served(
    redis_url: str, redis_client: object
) -> None:
    """Defaults (120/min, burst 10, 4 unconnected per client, half of capacity 20)."""
    offer = await browser_offer()
    async with live_fleet(redis_url, capacity=20):
        stop, sent = asyncio.Event(), []
        client = AsyncClient()
        floods = [asyncio.ensure_future(_flood(client, offer, stop, sent)) for _ in range(3)]
        tries = 15
        try:
            served = await _legit(client, offer, tries)
        finally:
            stop.set()
            await asyncio.gather(*floods)
    logger.info("legit caller served %d/%d while one address sent %d offers (%d answered)",
                served, tries, len(sent), sent.count(201))
    assert served / tries >= 0.9, (served, sent.count(201))
    assert sent.count(201) <= 4 and len(sent) > 50
