"""Run a set of child processes for ``manage.py up``: prefixed logs, restart on crash, clean stop.

Each child runs in its own process group so that stopping it also stops what it forked
(relay workers, Celery pool processes), and gets its stop signal when ``up`` dies, even by
SIGKILL (Linux ``PR_SET_PDEATHSIG``), so no child outlives it holding its ports. The state file
names ``up`` and its children; the next ``up`` reads it to find leftovers (``leftovers``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before restart N of a crashed child
STOP_GRACE = 10.0
PR_SET_PDEATHSIG = 1  # prctl(2) option, <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def set_death_signal(sig: int, *, parent: int) -> None:
    """This process gets ``sig`` when the thread that forked it dies (prctl(2)
    PR_SET_PDEATHSIG); if ``parent`` is already gone, at once."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), sig)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` calling ``set_death_signal``: only a prctl and getppid between fork and
    exec, no locks (start children from the main thread: the signal follows the forking thread,
    not the process)."""
    parent = os.getpid()
    return lambda: set_death_signal(sig, parent=parent)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    restart: bool = True
    required: bool = True  # when it exits for good, up stops
    drainable: bool = False  # exit status 0 is a finished drain: it stays down, up goes on
    stop_signal: int = signal.SIGTERM
    death_signal: int | None = None  # sent when up dies (default: stop_signal)


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
            preexec_fn=die_with_parent(child.spec.death_signal or child.spec.stop_signal),
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
        argv = {n: list(c.spec.argv) for n, c in self._children.items()}
        state = {"pid": os.getpid(), "argv": sys.argv, "children": self.pids(),
                 "children_argv": argv}
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


# leftovers of a previous up ------------------------------------------------------------------

@dataclass(frozen=True)
class Leftovers:
    """What the state file of an earlier ``up`` names that still runs our commands."""

    up_pid: int | None  # that ``up`` itself still runs
    children: dict[str, int]  # name -> pid of children still running their recorded command


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _exited(pid: int) -> bool:
    """Gone or a zombie: its files (and ports) are closed. An exiting process has no cmdline
    before its files close, so the cmdline cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _runs(pid: object, argv: object) -> bool:
    """``pid`` is alive and runs ``argv`` (its tail: the interpreter path may differ)."""
    if not isinstance(pid, int) or not isinstance(argv, list) or not argv or pid <= 0:
        return False
    cmdline = _cmdline(pid)
    return cmdline is not None and cmdline[-len(argv):] == argv


def leftovers(state_file: Path) -> Leftovers:
    """Read an earlier ``up``'s state file; pids reused by other programs do not count."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return Leftovers(None, {})
    up_pid = state.get("pid") if _runs(state.get("pid"), state.get("argv")) else None
    argv = state.get("children_argv") or {}
    children = {name: pid for name, pid in (state.get("children") or {}).items()
                if _runs(pid, argv.get(name))}
    return Leftovers(up_pid, children)


def stop_leftovers(children: Mapping[str, int], *, timeout: float = 5.0) -> None:
    """SIGTERM each leftover's process group, then SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in children.values():
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while not all(map(_exited, children.values())) and time.monotonic() < deadline:
            time.sleep(0.05)
