"""``python -m bench [NAME|all] [--quick] [--repeat N]``: one table (NAME: see ``BENCHMARKS``).

``all`` runs each benchmark in a process of its own, one after another, so a benchmark
inherits nothing from the ones before it (their edges, threads, aiortc objects and heap), and
the table gathers every process's rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, conditions, format_table, merge_runs, write

BENCHMARKS = ("relay", "tcp", "signaling", "setup", "setup_loss", "ffmpeg_setup", "voice",
              "capacity", "capacity_ab", "flows")


def _run_one(name: str, quick: bool) -> list[Row]:
    from bench import edge

    module = importlib.import_module(f"bench.{name}")
    try:
        rows: list[Row] = module.run(quick)
    finally:
        edge.close()  # the edges a benchmark started go with it
    return rows


def _run_apart(name: str, quick: bool) -> list[Row]:
    """``name`` in a fresh ``python -m bench NAME --rows FILE``; its rows back from FILE."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "bench", name, "--rows", str(out)]
        subprocess.run([*command, *(["--quick"] if quick else [])], check=True)
        return [Row(**fields) for fields in json.loads(out.read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke, < 3 min)")
    parser.add_argument("--rows", type=Path, help="write the rows as JSON here, print no table "
                        "(how ``all`` runs each benchmark)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each benchmark N times (odd), each in a process of its own, "
                             "and print the median of every row (this VM's runs differ by "
                             "more than several targets' margins)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")
    logging.basicConfig(level=logging.WARNING)
    if args.rows is not None:
        rows = _run_one(args.which, args.quick)
        args.rows.write_text(json.dumps([dataclasses.asdict(row) for row in rows]))
        return
    if args.repeat < 1 or args.repeat % 2 == 0:
        parser.error("--repeat: an odd number (the runs' majority decides a target)")
    names = BENCHMARKS if args.which == "all" else (args.which,)
    apart = len(names) > 1 or args.repeat > 1
    rows = []
    started = time.monotonic()
    for name in names:
        runs = []
        for n in range(args.repeat):
            began = time.monotonic()
            runs.append(_run_apart(name, args.quick) if apart else _run_one(name, args.quick))
            write(f"# {name}{f' run {n + 1}' if args.repeat > 1 else ''}: "
                  f"{time.monotonic() - began:.0f} s")
        rows += merge_runs(runs)
    runs_text = f", {args.repeat} runs each (medians)" if args.repeat > 1 else ""
    write(f"# {conditions()}; {'quick' if args.quick else 'full'} run{runs_text}, "
          f"{time.monotonic() - started:.0f} s")
    write(format_table(rows))


if __name__ == "__main__":
    main()
