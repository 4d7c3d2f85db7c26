"""``python -m bench [NAME|all] [--quick]``: one table (NAME: see ``BENCHMARKS``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import time

from bench.common import Row, conditions, format_table, write

BENCHMARKS = ("relay", "tcp", "signaling", "setup", "setup_loss", "ffmpeg_setup", "capacity",
              "capacity_ab", "flows")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke, < 3 min)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")
    logging.basicConfig(level=logging.WARNING)
    names = BENCHMARKS if args.which == "all" else (args.which,)
    rows: list[Row] = []
    started = time.monotonic()
    from bench import edge

    for name in names:
        module = importlib.import_module(f"bench.{name}")
        began = time.monotonic()
        try:
            rows += module.run(args.quick)
        finally:
            # the edges a benchmark started go with it: an idle edge's heartbeats, probes and
            # beat tasks run on every core (a full run left ~5 up during the capacity ramp)
            edge.close()
        write(f"# {name}: {time.monotonic() - began:.0f} s")
    write(f"# {conditions()}; {'quick' if args.quick else 'full'} run, "
          f"{time.monotonic() - started:.0f} s")
    write(format_table(rows))


if __name__ == "__main__":
    main()
