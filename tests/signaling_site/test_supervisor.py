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


def test_leftovers_are_children_still_running_their_command(tmp_path: Path) -> None:
    """A pid in an old state file counts only while it runs the command recorded for it."""
    import json
    import subprocess

    from signaling_site.supervisor import leftovers, stop_leftovers

    ours = (sys.executable, "-c", "import time; time.sleep(60)")
    child = subprocess.Popen(ours, start_new_session=True)
    reused = subprocess.Popen(["sleep", "60"], start_new_session=True)
    state = tmp_path / "up.json"
    try:
        for proc, argv in ((child, ours), (reused, ("sleep", "60"))):  # exec'd, not just forked
            deadline = time.monotonic() + 10
            while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1] != [
                    a.encode() for a in argv]:
                assert time.monotonic() < deadline, f"{argv} did not start"
                time.sleep(0.01)
        state.write_text(json.dumps({
            "pid": reused.pid, "argv": ["manage.py", "up"],
            "children": {"relay-1": child.pid, "transceiver-1": reused.pid, "gone": 999_999_999},
            "children_argv": {"relay-1": list(ours), "transceiver-1": list(ours),
                              "gone": list(ours)},
        }))
        found = leftovers(state)
        assert found.up_pid is None and found.children == {"relay-1": child.pid}
        stop_leftovers(found.children, timeout=5)
        assert child.wait(5) == -15  # SIGTERM was enough
        assert reused.poll() is None
    finally:
        for proc in (child, reused):
            proc.kill()
            proc.wait(5)
    assert leftovers(tmp_path / "missing.json").children == {}
