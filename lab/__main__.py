"""``python -m lab up | down | status | kill NAME | start NAME``: the namespace lab (root).
``./dev lab`` calls this.

``up`` builds the network, starts every component on its own host, waits until the fleet
reports healthy, writes ``var/lab/lab.json`` and prints ``READY``; the processes keep running
after it exits. ``down`` stops them and removes every namespace (also after a crashed ``up``).
``kill NAME`` / ``start NAME`` kill a fleet process on its host / start it again as ``up`` did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from lab import operate
from lab.netns import (
    LabError,
    can_make_namespaces,
    lab_namespaces,
    namespace_pids,
    remove_namespaces,
)
from lab.plan import build_plan, signaling_url
from lab.state import LabState, is_running, stop_processes
from lab.up import VAR, LabUp, say


def down(var: Path) -> int:
    """Stop recorded processes, kill what still runs in lab namespaces, remove them all."""
    state = LabState.load(var / "state.json")
    killed = stop_processes(state.processes)
    names = sorted(set(lab_namespaces()) | {n for n in state.namespaces if n in lab_namespaces()})
    strays = 0
    for netns in names:
        for pid in namespace_pids(netns):  # only the lab runs anything in its namespaces
            try:
                os.kill(pid, 9)
                strays += 1
            except ProcessLookupError:
                pass
    failed = remove_namespaces(names)
    for name in ("state.json", "lab.json", "secrets.json"):
        (var / name).unlink(missing_ok=True)
    for name in ("pg", "hosts"):  # database and Redis files; logs stay for the post-mortem
        shutil.rmtree(var / name, ignore_errors=True)
    say(f"[lab] down: {len(state.processes)} processes stopped ({len(killed)} killed, "
        f"{strays} strays), {len(names) - len(failed)} namespaces removed")
    return 1 if failed else 0


def up(var: Path, loss: float) -> int:
    why = can_make_namespaces()
    if why is not None:
        say(f"[lab] cannot start: {why}")
        return 2
    if lab_namespaces() or (var / "state.json").exists():
        say("[lab] sweeping a previous lab")
        down(var)
    var.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(var / "logs", ignore_errors=True)  # each lab's logs are its own
    started = time.monotonic()
    plan = build_plan()
    try:
        lab = LabUp(plan, var, loss)
        lab.run()
    except (LabError, RuntimeError, OSError) as exc:
        say(f"[lab] up failed after {time.monotonic() - started:.1f}s: {exc}")
        down(var)
        return 1
    total = time.monotonic() - started
    say(f"READY {signaling_url(plan)} lab={var / 'lab.json'} in {total:.1f}s "
        + " ".join(f"{k.split()[0]}={v:.1f}s" for k, v in lab.timings.items()))
    return 0


def status(var: Path) -> int:
    state = LabState.load(var / "state.json")
    for record in state.processes:
        say(f"{record.name:16} {record.netns:20} pid {record.pid:7} "
            f"{'running' if is_running(record) else 'GONE'}")
    say(f"namespaces: {len(lab_namespaces())}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="build the lab and start the fleet; prints READY")
    up_parser.add_argument("--loss", type=float, default=0.0, help="WAN loss fraction 0..1")
    sub.add_parser("down", help="stop everything and remove every lab namespace")
    sub.add_parser("status", help="list the lab's processes")
    kill_parser = sub.add_parser("kill", help="SIGKILL a fleet process (by status's name)")
    kill_parser.add_argument("name")
    start_parser = sub.add_parser("start", help="start a fleet process again, same command")
    start_parser.add_argument("name")
    args = parser.parse_args()
    if args.command == "up":
        return up(VAR, args.loss)
    if args.command == "down":
        return down(VAR)
    if args.command == "kill":
        say(f"[lab] {args.name}: {operate.kill(VAR, args.name)} killed")
        return 0
    if args.command == "start":
        try:
            say(f"[lab] {args.name}: started, pid {operate.start(VAR, args.name)}")
        except LabError as exc:
            say(f"[lab] cannot start {args.name}: {exc}")
            return 1
        return 0
    return status(VAR)


if __name__ == "__main__":
    sys.exit(main())
