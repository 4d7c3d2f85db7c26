"""Lab tests need root and network namespaces; they run only when asked (``-m lab``).
One lab serves every test of a session (``lab``); a test that leaves it broken asks for
``breaks_lab`` and runs after all the others."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.netns import can_make_namespaces

BASE = Path(__file__).resolve().parents[2]
VAR = BASE / "var" / "lab"
MIN_ECHO = 0.95
PROBE_INTERVAL = 2.0  # settings.HEALTH_PROBE_INTERVAL default, which the lab keeps


def _order(item: pytest.Item) -> tuple[bool, bool]:
    names = getattr(item, "fixturenames", ())
    return "lab" in names, "breaks_lab" in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``lab`` tests unless the run selected them: they build a whole fleet. Tests on
    the whole lab run last, so the small namespace tests do not share the CPU with it, and
    the ones that break it after those."""
    items.sort(key=_order)
    if "lab" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="lab tests run with `-m lab` or `./dev lab test`")
    for item in items:
        if item.get_closest_marker("lab") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_capable() -> None:
    """Skip with the reason when this process cannot make namespaces (not root, no TUN)."""
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Write a line to the terminal past pytest's capture: the lab's numbers are the point."""
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        if terminal is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(line)

    return write


@dataclass(frozen=True)
class Lab:
    data: dict[str, Any]
    ufrag_keys: str
    api_key: str  # the callers' (the site requires keys, as the manifests do)

    def clients(self) -> list[dict[str, Any]]:
        return [h for h in self.data["hosts"] if h["role"] == "client"]

    def client_argv(self, netns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", netns, sys.executable, "-m", "lab.client",
                self.data["signaling_url"], "--relays", json.dumps(self.data["relays"]), *args]

    def client_env(self) -> dict[str, str]:
        return {"UFRAG_KEYS": self.ufrag_keys, "WHIP_TOKEN": self.api_key, "PATH": "/usr/bin:/bin"}

    def run_client(self, netns: str, *args: str, timeout: float = 90) -> dict[str, Any]:
        proc = subprocess.run(self.client_argv(netns, *args), cwd=BASE, capture_output=True,
                              text=True, timeout=timeout, env=self.client_env(), check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def start_client(self, netns: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.client_argv(netns, *args), cwd=BASE, text=True,
                                env=self.client_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


def lab_command(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=BASE, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def lab(lab_capable: None, report: Callable[[str], None]) -> Iterator[Lab]:
    """The whole lab, up once for the session, always taken down."""
    started = time.monotonic()
    try:
        up = lab_command("up", timeout=240)
        report(up.stdout.rstrip())
        ready = [line for line in up.stdout.splitlines() if line.startswith("READY")]
        if up.returncode != 0 or not ready:
            pytest.fail(f"lab up failed:\n{up.stdout[-4000:]}\n{up.stderr[-2000:]}")
        report(f"[lab test] lab up took {time.monotonic() - started:.1f}s")
        secrets = json.loads((VAR / "secrets.json").read_text())
        yield Lab(json.loads((VAR / "lab.json").read_text()), secrets["UFRAG_KEYS"],
                  (VAR / "api_key").read_text().strip())
    finally:
        down = lab_command("down", timeout=120)
        report(down.stdout.rstrip())


@pytest.fixture(scope="session")
def breaks_lab() -> None:
    """Asked for by a test that leaves the lab broken: it runs after every other test."""
