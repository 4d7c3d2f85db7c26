"""Wrong requests get clean answers: problem+json for the API, never a 500 or a traceback."""

from __future__ import annotations

import json

import pytest
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.test import Client

pytestmark = [pytest.mark.django_db]
HOST = [(b"host", b"testserver")]


def _problem(response: object, status: int, code: str) -> dict:
    assert response.status_code == status, response.content  # type: ignore[attr-defined]
    assert response["Content-Type"] == "application/problem+json"  # type: ignore[index]
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["status"] == status and body["code"] == code and body["detail"]
    return body


def test_deeply_nested_json_offer_is_400(client: Client) -> None:
    deep = "[" * 3000 + "]" * 3000
    _problem(client.post("/v1/sessions", data=deep, content_type="application/json"),
             400, "bad_json")
    deep_object = '{"type": "offer", "sdp": ' + "[" * 3000 + "]" * 3000 + "}"
    _problem(client.post("/v1/sessions", data=deep_object, content_type="application/json"),
             400, "bad_json")


@pytest.mark.parametrize("path", ["/v1/sessions/not-a-uuid", "/v1/nowhere", "/v1/sessions/1/x"])
def test_unknown_api_paths_are_404_problem_json(client: Client, path: str) -> None:
    _problem(client.get(path), 404, "not_found")


def test_pages_outside_the_api_keep_html_404(client: Client) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_post_to_regions_is_405_problem_json_not_a_csrf_page(client: Client) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    response = csrf_client.post("/v1/regions", data="{}", content_type="application/json")
    _problem(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


@pytest.mark.parametrize("path", ["/static/../x", "/static/..%2fmanage.py",
                                  "/static/%2e%2e/manage.py"])
async def test_static_traversal_is_a_client_error(path: str) -> None:
    from signaling_site.asgi import application

    response = await HttpCommunicator(application, "GET", path, headers=HOST).get_response()
    assert response["status"] in (400, 404), response


async def test_websocket_to_an_unknown_path_is_refused_cleanly(redis_url: str) -> None:
    from signaling_site.asgi import application

    ws = WebsocketCommunicator(application, "/ws/nowhere", headers=HOST)
    connected, code = await ws.connect(timeout=5)
    assert not connected
    await ws.disconnect()
