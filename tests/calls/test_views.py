"""The WHIP endpoint's error contract: problem+json, nothing half-created."""

import json
from typing import Any

import pytest
from django.test import Client

from calls.models import Session
from geo.services import region_ensure_default
from tests.calls.test_sdp import OFFER

pytestmark = [pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _fleet(redis_client: object) -> None:
    region_ensure_default()


def _post(client: Client, body: bytes | str, content_type: str, **extra: str) -> object:
    return client.post("/v1/sessions", data=body, content_type=content_type, **extra)


def _problem(response: object, status: int, code: str) -> dict:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["status"] == status and body["code"] == code and body["detail"]
    return body


def test_wrong_content_type_is_415(client: Client) -> None:
    _problem(_post(client, "hello", "text/plain"), 415, "unsupported")
    assert Session.objects.count() == 0


def test_malformed_sdp_is_400(client: Client) -> None:
    body = _problem(_post(client, "v=1\r\nnonsense", "application/sdp"), 400, "bad_sdp")
    assert "v=0" in body["detail"]
    assert Session.objects.count() == 0


def test_offer_without_audio_is_400(client: Client) -> None:
    video = OFFER.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96")
    _problem(_post(client, video, "application/sdp"), 400, "bad_sdp")


def test_bad_json_is_400(client: Client) -> None:
    _problem(_post(client, "{not json", "application/json"), 400, "bad_sdp")
    _problem(_post(client, json.dumps({"type": "answer", "sdp": OFFER}), "application/json"),
             400, "bad_json")


def test_oversized_body_is_413(client: Client, settings: object) -> None:
    big = OFFER + "a=x-pad:" + "x" * 70_000 + "\r\n"
    _problem(_post(client, big, "application/sdp"), 413, "too_large")
    assert Session.objects.count() == 0


def test_no_healthy_transceiver_is_503_with_retry_after(client: Client) -> None:
    response = _post(client, OFFER, "application/sdp")
    _problem(response, 503, "no_capacity")
    assert int(response["Retry-After"]) > 0  # type: ignore[index]
    assert Session.objects.count() == 0


def test_unknown_region_pin_is_400(client: Client) -> None:
    response = client.post("/v1/sessions?region=nowhere", data=OFFER,
                           content_type="application/sdp")
    _problem(response, 400, "unknown_region")


def test_rate_limit_is_429(client: Client, settings: object) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 2  # type: ignore[attr-defined]
    for _ in range(2):
        assert _post(client, OFFER, "application/sdp").status_code == 503  # type: ignore[attr-defined]
    response = _post(client, OFFER, "application/sdp")
    _problem(response, 429, "rate_limited")
    assert response["Retry-After"]  # type: ignore[index]


def test_cors_preflight(client: Client) -> None:
    response = client.options("/v1/sessions", HTTP_ORIGIN="https://app.example",
                              HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Content-Type" in response["Access-Control-Allow-Headers"]
    assert response["Access-Control-Max-Age"] == "600"


def test_cors_with_named_origins(client: Client, settings: Any) -> None:
    """CORS_ALLOWED_ORIGINS without "*": a named origin reads the WHIP headers, another page
    gets no CORS headers (its browser then refuses to hand it the reply)."""
    settings.CORS_ALLOW_ALL_ORIGINS = False
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    named = client.get("/v1/regions", HTTP_ORIGIN="https://app.example")
    assert named["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = {h.strip() for h in named["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "ETag", "X-Region", "Retry-After"} <= exposed
    assert "origin" in named["Vary"].lower()
    other = client.get("/v1/regions", HTTP_ORIGIN="https://evil.example")
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other
    preflight = client.options("/v1/sessions", HTTP_ORIGIN="https://evil.example",
                               HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert "Access-Control-Allow-Origin" not in preflight


def test_errors_outside_the_views_carry_cors_too(client: Client) -> None:
    """A 404 for an unknown /v1/ path is readable by the page that asked (it can show why)."""
    response = client.get("/v1/nothing-here", HTTP_ORIGIN="https://app.example")
    assert response.status_code == 404
    assert response["Access-Control-Allow-Origin"] == "*"


def test_unknown_session_is_404(client: Client) -> None:
    response = client.get("/v1/sessions/00000000-0000-0000-0000-000000000000")
    _problem(response, 404, "not_found")
