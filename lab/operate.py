"""An operator's hands on a running lab: kill a fleet process on its host and start it again
with the same command, cut a host off from a service, move a NAT router's mappings."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from lab import manifests
from lab.components import Launcher, ProcSpec
from lab.configs import FAULT_TABLE, Secrets, block_ruleset, nat_ruleset
from lab.netns import LabError, sh
from lab.plan import PREFIX, build_plan
from lab.state import LabState, ProcessRecord, is_running, signal_group
from lab.up import BASE, MANIFESTS, base_env, pod_runs, proc_spec

CLIENT_ADDRESS = "192.168.1.10"  # every client LAN's caller (lab.plan)


def fleet_spec(var: Path, name: str) -> ProcSpec:
    """The pod ``lab up`` started as ``name``, from the manifests it rendered and its Secret
    (``LabError`` for a name it did not start)."""
    saved = json.loads((var / "secrets.json").read_text())
    secrets = Secrets(saved["SECRET_KEY"], saved["UFRAG_KEYS"], saved["DB_PASSWORD"])
    runs = {run.name: run for run in pod_runs(build_plan(), var, secrets,
                                              manifests.load(var / MANIFESTS))
            if not run.one_shot}
    if name not in runs:
        raise LabError(f"no fleet process {name!r}: one of {', '.join(sorted(runs))}")
    return proc_spec(runs[name], var)


def pre_stop(var: Path, name: str) -> subprocess.Popen[str]:
    """Start the pod's preStop hook on its host with its container's environment, as the
    kubelet does before it stops a pod (the caller waits for it)."""
    saved = json.loads((var / "secrets.json").read_text())
    secrets = Secrets(saved["SECRET_KEY"], saved["UFRAG_KEYS"], saved["DB_PASSWORD"])
    runs = {run.name: run for run in pod_runs(build_plan(), var, secrets,
                                              manifests.load(var / MANIFESTS))}
    run = runs.get(name)
    if run is None or run.pre_stop is None:
        raise LabError(f"{name!r} has no preStop hook")
    return subprocess.Popen(["ip", "netns", "exec", PREFIX + run.host, *run.pre_stop],
                            env={**base_env(), **run.env}, cwd=BASE, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def launcher(var: Path) -> Launcher:
    """A launcher with the running lab's state (each spec carries its pod's environment)."""
    return Launcher(LabState.load(var / "state.json"), base_env(), var / "logs", BASE)


def running(var: Path, name: str) -> list[ProcessRecord]:
    return [r for r in LabState.load(var / "state.json").processes
            if r.name == name and is_running(r)]


def kill(var: Path, name: str, signum: int = signal.SIGKILL, wait: float = 5.0) -> int:
    """Signal every running ``name`` (its process group); with SIGKILL wait until it is gone.
    Returns how many were signalled."""
    records = running(var, name)
    for record in records:
        signal_group(record, signum)
    deadline = time.monotonic() + wait
    while signum == signal.SIGKILL and any(is_running(r) for r in records):
        if time.monotonic() > deadline:
            raise LabError(f"{name} still runs {wait:g}s after SIGKILL")
        time.sleep(0.005)
    return len(records)


def start(var: Path, name: str) -> int:
    """Start ``name`` again on its host with ``lab up``'s command; its pid. Refuses a duplicate."""
    if not (var / "state.json").exists():
        raise LabError("no lab is up")
    if running(var, name):
        raise LabError(f"{name} is already running")
    return launcher(var).start(fleet_spec(var, name)).pid


def block(host: str, address: str, port: int) -> None:
    """Drop ``host``'s TCP traffic to ``address:port`` until ``unblock``."""
    sh("ip", "netns", "exec", PREFIX + host, "nft", "-f", "-",
       stdin=block_ruleset(address, port))


def unblock(host: str) -> None:
    sh("ip", "netns", "exec", PREFIX + host, "nft", "delete", "table", "ip", FAULT_TABLE)


def renat(continent: str, ports: str | None) -> int:
    """Masquerade ``continent``'s LAN to ``ports`` from now on and forget its caller's mappings
    (``conntrack -D``): its next packets leave from a new source port. Returns how many
    mappings were deleted."""
    nat = PREFIX + f"nat-{continent}"
    sh("ip", "netns", "exec", nat, "nft", "-f", "-",
       stdin="flush table ip lab_nat\n" + nat_ruleset(ports=ports))
    # one line per deleted entry; exit status 1 when none matched
    out = sh("ip", "netns", "exec", nat, "conntrack", "-D", "-s", CLIENT_ADDRESS, check=False)
    return len(out.splitlines())
