"""The demo page with the API's authentication on (``AUTH_REQUIRED=1``; ``up`` keeps the open
demo on): the page gets a client secret from this site and calls through the relay with it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import ConsoleLog
from tests.browser.test_demo import _received, _wait
from tests.e2e.conftest import LOCAL, ROOT, Edge, start_edge, stop_edge

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture(scope="module")
def auth_browser_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    edge = start_edge(tmp_path_factory.mktemp("auth-browser-edge"), redis_dbs(),
                      json.loads(json.dumps(LOCAL)), extra_env={"AUTH_REQUIRED": "1"})
    yield edge
    stop_edge(edge)


def _stored_state(edge: Edge, session_id: str) -> str:
    code = f"from calls.models import Session; print(Session.objects.get(id='{session_id}').state)"
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
                            cwd=ROOT, env=edge.manage_env(), text=True, capture_output=True,
                            timeout=60, check=True)
    return result.stdout.splitlines()[-1].strip()  # after the shell's own notes


def test_demo_call_with_authentication_on(
    auth_browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, log = page_and_log
    edge = auth_browser_edge
    assert any("authentication is ON" in line and "open demo on" in line for line in edge.lines)
    assert page.request.post(edge.base_url + "/v1/sessions", data="v=0",
                             headers={"Content-Type": "application/sdp"}).status == 401
    page.goto(edge.base_url + "/")
    assert page.get_attribute("#call-form", "data-client-secret-url") == "/demo/client_secret"
    with page.expect_response("**/demo/client_secret") as minted:
        page.click("#start")
    assert minted.value.status == 200
    page.wait_for_selector("#conn-state[data-state=connected]", timeout=20_000)
    _wait(lambda: _received(page)[0] > 50, 10, "audio packets")
    session_id = page.inner_text("#route-session")
    assert _stored_state(edge, session_id) == "connected"
    page.click("#stop")
    page.wait_for_selector("#conn-state:text('closed')", timeout=5_000)
    _wait(lambda: _stored_state(edge, session_id) == "ended", 10, "the DELETE with the secret")
    assert log.errors == [] and log.failed == [], (log.errors, log.failed)
