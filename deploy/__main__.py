"""``python -m deploy render NAME | validate | entrypoints [--python P --cwd DIR]``
(``./dev k8s ...``): render an overlay to stdout; validate every overlay (schemas for two
Kubernetes versions, project checks); run each container's command with ``--help``."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.render import BASE, render, render_text, target_dir, targets
from deploy.validate import (
    KUBERNETES_VERSIONS,
    commands,
    project_problems,
    run_help,
    schema_errors,
)


def validate() -> int:
    failures = 0
    for name, directory in targets().items():
        docs = render(directory)
        problems = [e for v in KUBERNETES_VERSIONS for e in schema_errors(docs, v)]
        problems += project_problems(docs)
        for problem in problems:
            sys.stderr.write(f"{name}: {problem}\n")
        failures += len(problems)
        sys.stdout.write(f"{name}: {len(docs)} objects, "
                         f"{'valid' if not problems else f'{len(problems)} problems'} "
                         f"(Kubernetes {', '.join(KUBERNETES_VERSIONS)}, strict)\n")
    return 1 if failures else 0


def entrypoints(python: str, cwd: Path) -> int:
    every = sorted(set().union(*(commands(render(d)) for d in targets().values())))
    failed = 0
    with ThreadPoolExecutor(max_workers=4) as pool:  # each is a Python start-up, mostly waiting
        results = list(pool.map(lambda command: run_help(command, python, cwd), every))
    for command, done in zip(every, results, strict=True):
        ok = done.returncode == 0 and "usage" in done.stdout.lower()
        failed += not ok
        sys.stdout.write(f"{'ok  ' if ok else 'FAIL'} {' '.join(command)} --help\n")
        if not ok:
            sys.stderr.write(done.stderr[-2000:])
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev k8s", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    render_parser = sub.add_parser("render", help="kustomize build of an overlay, to stdout")
    render_parser.add_argument("name", help=f"one of {', '.join(targets())}")
    sub.add_parser("validate", help="schemas (two Kubernetes versions) and project checks")
    help_parser = sub.add_parser("entrypoints", help="run each container command with --help")
    help_parser.add_argument("--python", default=sys.executable)
    help_parser.add_argument("--cwd", type=Path, default=BASE)
    args = parser.parse_args()
    if args.command == "render":
        try:
            sys.stdout.write(render_text(target_dir(args.name)))
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    if args.command == "validate":
        return validate()
    return entrypoints(args.python, args.cwd)


if __name__ == "__main__":
    sys.exit(main())
