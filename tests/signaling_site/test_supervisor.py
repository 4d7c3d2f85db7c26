"""The supervisor's restart rules: crashes restart; a drained node (exit 0) and a
``--no-restart`` child stay down without stopping ``up``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from signaling_site.supervisor import ChildSpec, Supervisor


def _wait_exit(sup: Supervisor, name: str) -> None:
    deadline = time.monotonic() + 10
    proc = sup._children[name].proc
    assert proc is not None
    while proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_drained_exit_and_no_restart_children_stay_down(tmp_path: Path) -> None:
    lines: list[str] = []
    sup = Supervisor(env={}, write=lines.append, state_file=tmp_path / "up.json")
    exit_with = [sys.executable, "-c"]
    try:
        sup.add(ChildSpec("drained", (*exit_with, "raise SystemExit(0)"), drainable=True))
        sup.add(ChildSpec("crashed", (*exit_with, "raise SystemExit(3)"), drainable=True))
        sup.add(ChildSpec("kept-down", (*exit_with, "raise SystemExit(3)"), restart=False,
                          required=False))
        for name in ("drained", "crashed", "kept-down"):
            _wait_exit(sup, name)
        time.sleep(0.25)  # past the first restart backoff
        assert sup.poll() == ["crashed"]
        assert sup.poll() == []
        assert sup.exited() == []  # up goes on
        assert sum("drained exited with 0; not restarting" in line for line in lines) == 1
        assert sum("kept-down exited with 3; not restarting" in line for line in lines) == 1
    finally:
        sup.stop()
