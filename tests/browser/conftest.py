"""Debian's Chromium driven by Playwright against a running ``manage.py up`` with two regions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Response,
    sync_playwright,
)

from tests.e2e.conftest import ROOT, Edge, redis_dbs, start_edge, stop_edge

__all__ = ["redis_dbs"]  # re-exported fixture: the browser edge gets a db of its own

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
STAFF_USER, STAFF_PASSWORD = "ops", "browser-test-password"

REGIONS = [
    {"code": "eu-west", "name": "Dublin", "latitude": 53.35, "longitude": -6.26, "default": True,
     "relays": [{"shard": 1}], "transceivers": [{"id": 1}]},
    {"code": "us-east", "name": "Virginia", "latitude": 38.95, "longitude": -77.45,
     "relays": [{"shard": 2}], "transceivers": [{"id": 2}, {"id": 4}]},
    {"code": "ap-south", "name": "Mumbai", "latitude": 19.08, "longitude": 72.88,
     "relays": [{"shard": 3}], "transceivers": [{"id": 3}]},
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason="Debian chromium not installed (apt-get install chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


# Package scope: torn down before other packages' tests run. Playwright's sync API leaves an event
# loop marked running in this thread, which later asyncio tests cannot share.
@pytest.fixture(scope="package")
def browser_edge(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: Callable[[], str]
) -> Iterator[Edge]:
    """The whole system with three regions, each with one relay shard and one transceiver."""
    redis_url = redis_dbs()
    tmp = tmp_path_factory.mktemp("browser-edge")
    edge = start_edge(
        tmp, redis_url, json.loads(json.dumps(REGIONS)), extra_env={"HEARTBEAT_TTL": "3"}
    )
    env = edge.manage_env(DJANGO_SUPERUSER_PASSWORD=STAFF_PASSWORD)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "createsuperuser", "--noinput",
         "--username", STAFF_USER, "--email", "ops@example.com"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    yield edge
    stop_edge(edge)


@dataclass
class ConsoleLog:
    """Console errors and uncaught exceptions seen by a page."""

    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # HTTP responses >= 400

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error}")

    def on_response(self, response: Response) -> None:
        """Names the URL behind a "Failed to load resource" console error."""
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")


@pytest.fixture(scope="package")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # A temporary profile per launch: Playwright creates and deletes the user-data-dir.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_and_log(chromium: Browser) -> Iterator[tuple[Page, ConsoleLog]]:
    log = ConsoleLog()
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.on("console", log.on_console)
    page.on("pageerror", log.on_page_error)
    page.on("response", log.on_response)
    yield page, log
    context.close()


def save_screenshot(page: Page, name: str, *, docs: bool = True, full_page: bool = True) -> Path:
    """Save ``test-artifacts/<name>.png``, and copy it to ``docs/`` (the README shows those)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if docs:
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)
    return path
