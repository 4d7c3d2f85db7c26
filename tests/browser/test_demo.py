"""The demo page in Debian's Chromium: a real call through the relay to the echo agent."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import ConsoleLog, save_screenshot
from tests.e2e.conftest import Edge

pytestmark = [pytest.mark.browser, pytest.mark.e2e]



def _received(page: Page) -> tuple[int, int]:
    cell = page.locator("#received")
    return int(cell.get_attribute("data-packets") or 0), int(cell.get_attribute("data-bytes") or 0)


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_call_connects_through_the_relay_and_receives_audio(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, log = page_and_log
    page.goto(browser_edge.base_url + "/")
    page.focus("#start")
    page.keyboard.press("Enter")  # keyboard only

    page.wait_for_selector("#conn-state[data-state=connected]", timeout=20_000)
    assert page.inner_text("#route-region") == "eu-west"
    assert page.inner_text("#route-relay") == "1"
    assert page.inner_text("#route-transceiver") == "1"
    assert page.inner_text("#route-reason")

    _wait(lambda: _received(page)[0] > 0, 10, "first audio packets")
    first = _received(page)
    _wait(lambda: _received(page)[0] > first[0] + 40, 10, "more audio packets")
    packets, size = _received(page)
    assert packets > first[0] and size > first[1]
    _wait(lambda: page.get_attribute("#m2e", "data-median"), 15, "a chirp's echo")
    m2e = int(page.get_attribute("#m2e", "data-median") or 0)
    assert 20 < m2e < 1500, m2e
    _wait(lambda: page.inner_text("#rtt") != "—", 10, "RTT")
    assert "connected" in page.inner_text("#events")
    assert page.evaluate("document.activeElement.id") == "stop"
    time.sleep(3)  # a few more chirps and stats for the screenshot
    save_screenshot(page, "demo")

    page.keyboard.press("Enter")  # Stop has the focus
    page.wait_for_selector("#conn-state:text('closed')", timeout=5_000)
    session_id = page.inner_text("#route-session")
    url = f"{browser_edge.base_url}/v1/sessions/{session_id}"
    _wait(lambda: _session_state(page, url) == "ended", 5, "DELETE to end the session")
    assert log.errors == [], log.failed


def _session_state(page: Page, url: str) -> str:
    response = page.request.get(url)
    return str(response.json()["state"])


def test_pinned_region_at_375px(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, log = page_and_log
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto(browser_edge.base_url + "/")
    page.select_option("#region", "us-east")
    page.click("#start")
    page.wait_for_selector("#conn-state[data-state=connected]", timeout=20_000)
    assert page.inner_text("#route-region") == "us-east"
    assert page.inner_text("#route-relay") == "2"
    _wait(lambda: _received(page)[0] > 50, 10, "audio packets")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"page is {width} px wide at a 375 px viewport"
    time.sleep(2)
    save_screenshot(page, "demo-375")
    page.click("#stop")
    assert log.errors == [], log.failed


def test_no_capacity_is_explained(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, _ = page_and_log
    page.route(
        "**/v1/sessions*",
        lambda route: route.fulfill(
            status=503, headers={"Retry-After": "7", "Content-Type": "application/problem+json"},
            body='{"status": 503, "code": "no_capacity", "detail": "no capacity"}',
        ),
    )
    page.goto(browser_edge.base_url + "/")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "retry in 7 s" in page.inner_text("#error")
    assert not page.is_disabled("#start")


def test_missing_microphone_is_explained(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, log = page_and_log
    page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () => "
        "Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));"
    )
    page.goto(browser_edge.base_url + "/")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "No microphone was found" in page.inner_text("#error")
    assert log.errors == [], log.failed
