"""Offers the shallow check passes but a real aiortc transceiver cannot negotiate are the
caller's fault: 400 ``bad_sdp`` with the reason, never 503 ``no_capacity`` (and no row left)."""

from __future__ import annotations

import json
import re

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from calls.models import Session
from tests.calls.live_fleet import browser_offer, live_fleet

pytestmark = [pytest.mark.django_db(transaction=True)]


def _audio_section(sdp: str) -> str:
    return sdp[sdp.index("m=audio"):]


def _without_setup(sdp: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=setup"))


def _duplicate_mid(sdp: str) -> str:
    video = _audio_section(sdp).replace("m=audio", "m=video", 1)
    return sdp + video.replace("a=sendrecv", "a=recvonly")


def _unknown_codecs(sdp: str) -> str:
    return re.sub(r"a=rtpmap:(\d+) [\w-]+/", r"a=rtpmap:\1 x-unknown/", sdp)


async def _post(client: AsyncClient, sdp: str) -> object:
    return await client.post("/v1/sessions", data=sdp, content_type="application/sdp")


def _bad_sdp(response: object) -> str:
    assert response.status_code == 400, response.content  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    assert not response.has_header("Retry-After")  # type: ignore[attr-defined]
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["code"] == "bad_sdp" and body["detail"]
    return str(body["detail"])


async def test_two_audio_sections_are_refused_before_placement(
    redis_url: str, redis_client: object
) -> None:
    offer = await browser_offer()
    detail = _bad_sdp(await _post(AsyncClient(), offer + _audio_section(offer)))
    assert "at most 1 audio section" in detail


@pytest.mark.parametrize("mangle", [_without_setup, _duplicate_mid, _unknown_codecs])
async def test_offers_aiortc_cannot_negotiate_are_400(
    redis_url: str, redis_client: object, mangle: object, caplog: pytest.LogCaptureFixture
) -> None:
    offer = await browser_offer()
    async with live_fleet(redis_url, capacity=10):
        client = AsyncClient()
        _bad_sdp(await _post(client, mangle(offer)))  # type: ignore[operator]
        assert await sync_to_async(Session.objects.count)() == 0
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert (await _post(client, offer)).status_code == 201  # the transceiver is fine
