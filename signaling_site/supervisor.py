"""Run a set of child processes for ``manage.py up``: prefixed logs, restart on crash, clean stop.

Each child runs in its own process group so that stopping it also stops what it forked
(relay workers, Celery pool processes).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before restart N of a crashed child
STOP_GRACE = 10.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    restart: bool = True
    required: bool = True  # when it exits for good, up stops
    drainable: bool = False  # exit status 0 is a finished drain: it stays down, up goes on
    stop_signal: int = signal.SIGTERM


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: threading.Thread | None = field(default=None, repr=False)
    done: bool = False  # exited and will not be restarted (reported once)


class Supervisor:
    """Starts children, pumps their output to ``write`` with a name prefix, restarts crashes."""

    def __init__(
        self, *, env: Mapping[str, str], write: Callable[[str], None], state_file: Path
    ) -> None:
        self._env = dict(env)
        self._write = write
        self._lock = threading.Lock()
        self._children: dict[str, Child] = {}
        self._stopping = threading.Event()
        self._state_file = state_file

    def say(self, line: str) -> None:
        with self._lock:
            self._write(line)

    def add(self, spec: ChildSpec) -> None:
        child = Child(spec)
        self._children[spec.name] = child
        self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.spec.argv,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        assert child.proc.stdout is not None
        child.pump = threading.Thread(
            target=self._pump, args=(child.spec.name, child.proc.stdout), daemon=True
        )
        child.pump.start()
        self._save_state()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(f"[{name}] {raw.decode(errors='replace').rstrip()}")

    def pids(self) -> dict[str, int]:
        return {n: c.proc.pid for n, c in self._children.items() if c.proc is not None}

    def _save_state(self) -> None:
        state = {"pid": os.getpid(), "children": self.pids()}
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_file)

    def poll(self) -> list[str]:
        """Restart crashed children (with backoff); return the names restarted now."""
        restarted = []
        for child in self._children.values():
            proc = child.proc
            if proc is None or proc.poll() is None or self._stopping.is_set() or child.done:
                continue
            if not child.spec.restart or (child.spec.drainable and proc.returncode == 0):
                child.done = True
                self.say(f"[up] {child.spec.name} exited with {proc.returncode}; not restarting")
                continue
            backoff = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
            if time.monotonic() - child.started_at < backoff:
                continue
            if time.monotonic() - child.started_at > 60:
                child.restarts = 0  # it had been up a while: not a crash loop
            self.say(f"[up] {child.spec.name} exited with {proc.returncode}; restarting")
            child.restarts += 1
            self._start(child)
            restarted.append(child.spec.name)
        return restarted

    def exited(self) -> list[str]:
        """Required children that died and will not be restarted."""
        return [
            n
            for n, c in self._children.items()
            if not c.spec.restart and c.spec.required and c.proc is not None
            and c.proc.poll() is not None
        ]

    def stop(self, order: Sequence[str] | None = None) -> None:
        """SIGTERM every child's process group (in ``order`` first), then SIGKILL stragglers."""
        self._stopping.set()
        names = list(order or []) + [n for n in self._children if n not in (order or [])]
        for name in names:
            self._signal(name, signal.Signals(self._children[name].spec.stop_signal))
        deadline = time.monotonic() + STOP_GRACE
        for name in names:
            proc = self._children[name].proc
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"[up] {name} did not stop in {STOP_GRACE:.0f}s; killing")
                self._signal(name, signal.SIGKILL)
                proc.wait(timeout=5)
            self._signal(name, signal.SIGKILL)  # reap forked grandchildren left in the group
        self._state_file.unlink(missing_ok=True)

    def _signal(self, name: str, sig: signal.Signals) -> None:
        proc = self._children[name].proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
