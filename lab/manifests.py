"""The lab runs the manifests: every workload of each region's rendered overlay
(``deploy/k8s/overlays/<region>``) is started on its lab host with its container's command,
args and environment, as the kubelet would build them (``deploy.manifests``).

What a cluster would provide is substituted, and nothing else:
- the pod: its IP (the host's backbone address), name, namespace, StatefulSet ordinal, and one
  CPU for ``resourceFieldRef`` (the lab's 21 hosts share two);
- the Secret ``edge-secrets`` (the lab's own keys, Redis and PostgreSQL on ``core``), with
  exactly the keys of ``deploy/k8s/secret.example.yaml``;
- the values an operator edits in the ConfigMaps for a site (``site_config``): hosts and proxy
  addresses, the GeoIP database, the relay's public address;
- the image: ``python`` is this venv's interpreter, ``workingDir`` the source tree, the
  Dockerfile's ``ENV``, and each ``emptyDir`` a directory of the host's own.
A workload the lab has no host for, a replica count that does not match its hosts, or a
container whose environment or command line cannot be built is a ``LabError``.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.manifests import (
    PodContext,
    Workload,
    config_maps,
    container_argv,
    container_env,
    probe_port,
    workloads,
)
from lab.netns import LabError
from lab.plan import RELAY_PUBLIC_PORT, Plan, Role, private_address, public_address

Doc = dict[str, Any]
SECRET_NAME = "edge-secrets"
LAB_CPUS = 1
IMAGE_WORKDIR = "/app"


@dataclass(frozen=True, slots=True)
class Probe:
    """A readiness probe as the kubelet runs it from the pod's node: HTTP GET or TCP connect."""

    address: str
    port: int
    path: str | None  # None: TCP
    host_header: str | None = None


@dataclass(frozen=True, slots=True)
class PodRun:
    """One pod's container as the lab starts it on ``host``."""

    name: str
    host: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    one_shot: bool  # a Job: run to completion before the fleet starts
    stop_signal: int = signal.SIGTERM
    readiness: Probe | None = None
    volumes: tuple[str, ...] = ()  # host directories standing in for emptyDirs
    pre_stop: tuple[str, ...] | None = None  # the container's preStop exec hook


def placements(plan: Plan, region: str, workload: Workload) -> list[tuple[str, str]]:
    """(process name, host) of each replica of ``workload`` from ``region``'s overlay."""
    hosts: dict[tuple[str, str], list[tuple[str, str]]] = {
        ("Deployment", "relay"): [(f"relay-{region}", f"relay-{region}")],
        ("Job", "region"): [(f"region-{region}", f"relay-{region}")],
        ("StatefulSet", "transceiver"): [(h.name, h.name) for h in plan.by_role(Role.TRANSCEIVER)
                                         if h.region == region],
        ("Deployment", "signaling"): [(h.name, h.name) for h in plan.by_role(Role.SIGNALING)],
        ("Deployment", "celery-worker"): [("celery-worker", "worker")],
        ("Deployment", "celery-beat"): [("celery-beat", "core")],
        ("Job", "migrate"): [("migrate", "core")],
    }
    found = hosts.get((workload.kind, workload.name))
    if found is None:
        raise LabError(f"{region}: no lab host for {workload.kind}/{workload.name}")
    if len(found) != workload.replicas:
        raise LabError(f"{region}: {workload.kind}/{workload.name} has {workload.replicas} "
                       f"replicas, the lab {len(found)} hosts for it")
    return found


def site_config(plan: Plan, geoip_path: str, region: str) -> dict[str, dict[str, str]]:
    """The ConfigMap values an operator sets for this site (the lab's addresses)."""
    lb_public, lb_private = public_address(plan, "lb"), private_address(plan, "lb")
    hosts = [lb_public, *(private_address(plan, h.name) for h in plan.by_role(Role.SIGNALING))]
    relay = f"relay-{region}"
    return {
        "edge-settings": {
            "ALLOWED_HOSTS": ",".join([*hosts, "localhost", "127.0.0.1"]),
            "CSRF_TRUSTED_ORIGINS": f"http://{lb_public}",
            "TRUSTED_PROXIES": f"{lb_private}/32",
            "GEOIP_DATABASE": geoip_path,
        },
        "edge-region": {"RELAY_ADVERTISE": f"{public_address(plan, relay)}:{RELAY_PUBLIC_PORT}"},
    }


def image_env(dockerfile: str) -> dict[str, str]:
    """``ENV`` of the Dockerfile's final stage (``PATH`` aside: the lab's venv is on it)."""
    final = re.split(r"(?m)^FROM\s", dockerfile)[-1].replace("\\\n", " ")
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for word in line[4:].split():
                name, _, value = word.partition("=")
                if name != "PATH":
                    env[name] = value
    return env


def pod_runs(plan: Plan, manifests: Mapping[str, list[Doc]], *, secret: Mapping[str, str],
             site: Mapping[str, Mapping[str, Mapping[str, str]]], python: str, base: Path,
             var: Path, image: Mapping[str, str]) -> list[PodRun]:
    """Every pod of every region's overlay, Jobs first, as the lab starts them."""
    runs = []
    for region in (r.code for r in plan.regions):
        if region not in manifests:
            raise LabError(f"no rendered overlay for region {region}")
        docs = manifests[region]
        maps = config_maps(docs)
        for name, edits in site[region].items():
            maps[name] = {**maps.get(name, {}), **edits}
        for workload in workloads(docs):
            for ordinal, (proc, host) in enumerate(placements(plan, region, workload)):
                pod = PodContext(
                    f"{workload.name}-{ordinal}", workload.namespace, private_address(plan, host),
                    ordinal if workload.kind == "StatefulSet" else None, LAB_CPUS, maps,
                    {SECRET_NAME: secret})
                runs.append(_pod_run(workload, pod, proc, host, python=python, base=base,
                                     var=var, image=image))
    return sorted(runs, key=lambda run: not run.one_shot)


def _pod_run(workload: Workload, pod: PodContext, proc: str, host: str, *, python: str,
             base: Path, var: Path, image: Mapping[str, str]) -> PodRun:
    if len(workload.containers) != 1:
        raise LabError(f"{workload.name}: the lab runs pods of one container")
    container = workload.containers[0]
    try:
        env = container_env(container, pod)
        argv = list(container_argv(container, env))
    except ValueError as exc:
        raise LabError(f"{proc}: {workload.kind}/{workload.name} would not start: {exc}") from None
    if container.get("workingDir", IMAGE_WORKDIR) != IMAGE_WORKDIR:
        raise LabError(f"{proc}: workingDir {container.get('workingDir')} is not the image's")
    volumes = _empty_dirs(workload, container, var / "hosts" / host / "volumes")
    for mount, directory in volumes.items():  # the manifest's words only: not our python
        argv = [str(directory) + word[len(mount):] if word.startswith(mount + "/") else word
                for word in argv]
    if argv[0] == "python":  # last: a project under /tmp must keep its venv's path
        argv[0] = python
    readiness = None
    if "readinessProbe" in container:
        probe = container["readinessProbe"]
        http = probe.get("httpGet")
        headers = {h["name"]: h["value"] for h in (http or {}).get("httpHeaders", [])}
        readiness = Probe(pod.ip, probe_port(container, probe), http["path"] if http else None,
                          headers.get("Host"))
    # a transceiver stops at once on SIGINT (SIGTERM would drain it for DRAIN_GRACE)
    stop = signal.SIGINT if workload.name == "transceiver" else signal.SIGTERM
    hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop = None  # exec hooks get no $(VAR) expansion; the image's python all the same
    if hook:
        pre_stop = tuple(python if word == "python" else str(word) for word in hook)
    return PodRun(proc, host, tuple(argv), {**image, **env}, workload.kind == "Job", stop,
                  readiness, tuple(str(d) for d in volumes.values()), pre_stop)


def _empty_dirs(workload: Workload, container: Doc, root: Path) -> dict[str, Path]:
    """mountPath -> the host directory standing in for each emptyDir the container mounts."""
    empty = {v["name"] for v in workload.pod.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"]: root / m["name"] for m in container.get("volumeMounts", [])
            if m["name"] in empty}


def save(path: Path, manifests: Mapping[str, list[Doc]]) -> None:
    path.write_text(json.dumps(manifests))


def load(path: Path) -> dict[str, list[Doc]]:
    if not path.exists():
        raise LabError(f"no rendered manifests at {path}: is a lab up?")
    return dict(json.loads(path.read_text()))
