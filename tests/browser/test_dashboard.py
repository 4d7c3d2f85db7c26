"""The dashboard in Debian's Chromium: staff login, live regions, a hung transceiver, actions."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import STAFF_PASSWORD, STAFF_USER, ConsoleLog, save_screenshot
from tests.e2e.conftest import Edge

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

REGION = "section.region[data-region='{code}']"


def _region(code: str, health: str) -> str:
    return REGION.format(code=code) + f"[data-health='{health}']"


@contextmanager
def _frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a process (it stops heartbeating, like a hung one) and always SIGCONT it after.

    A SIGKILLed transceiver is restarted by ``manage.py up`` at once, so it would never look down.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _login(page: Page, base: str) -> None:
    page.goto(base + "/dashboard/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", STAFF_USER)
    page.fill("#id_password", STAFF_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/dashboard/")


def test_dashboard_shows_regions_live_and_a_region_going_down(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog], chromium: Browser
) -> None:
    page, log = page_and_log
    base = browser_edge.base_url
    _login(page, base)
    for code in ("eu-west", "us-east", "ap-south"):
        page.wait_for_selector(_region(code, "up"), timeout=15_000)
    assert page.locator("#map circle.region").count() == 3

    # A call in another tab gives the dashboard a live session and relay packets per second.
    caller = chromium.new_page()
    try:
        caller.goto(base + "/")
        caller.click("#start")
        caller.wait_for_selector("#conn-state[data-state=connected]", timeout=20_000)
        # both directions of one call: ~50 packets/s each way once a full second is counted
        page.wait_for_function(
            "Number(document.getElementById('sum-pps').textContent) > 60", timeout=10_000
        )
        page.wait_for_function(
            "document.getElementById('sum-sessions').textContent === '1'", timeout=10_000
        )
        save_screenshot(page, "dashboard")
    finally:
        caller.click("#stop")
        caller.close()

    with _frozen(browser_edge.children()["transceiver-3"]):
        page.wait_for_selector(_region("ap-south", "down"), timeout=15_000)
        page.wait_for_selector(_region("eu-west", "up"))
        save_screenshot(page, "dashboard-region-down", docs=False)
    page.wait_for_selector(_region("ap-south", "up"), timeout=15_000)
    assert log.errors == [], log.failed


def test_dashboard_actions_disable_a_region_and_drain_a_node(
    browser_edge: Edge, page_and_log: tuple[Page, ConsoleLog]
) -> None:
    page, log = page_and_log
    base = browser_edge.base_url
    _login(page, base)
    us = REGION.format(code="us-east")
    page.click(f"{us} >> text=Disable region")
    page.wait_for_selector(_region("us-east", "disabled"))
    assert "Region us-east disabled" in page.inner_text(".messages")
    page.click(f"{us} >> text=Enable region")
    page.wait_for_selector(_region("us-east", "up"), timeout=10_000)

    # A drained transceiver with no calls exits at once (up leaves it down): drain the region's
    # second one, so the demo tests still find us-east's first.
    drain_form = f"{us} form[action='/dashboard/nodes/transceiver/4/drain']"
    page.click(f"{drain_form} button")
    assert "Transceiver 4 is draining" in page.inner_text(".messages")
    page.wait_for_selector(f"{drain_form} >> text=Resume")
    page.click(f"{drain_form} button")
    assert "Transceiver 4 resumed" in page.inner_text(".messages")

    page.set_viewport_size({"width": 375, "height": 812})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"dashboard is {width} px wide at a 375 px viewport"
    save_screenshot(page, "dashboard-375", docs=False)
    assert log.errors == [], log.failed
