"""Rendered manifests as the lab and the checks read them (pure: documents in, values out).

A pod's container runs with ``command`` + ``args`` after Kubernetes' ``$(VAR)`` expansion, in
an environment made from ``envFrom`` then ``env`` (ConfigMaps, Secrets, the downward API).
``PodContext`` is what a cluster would provide to one pod; anything it cannot provide (a
missing ConfigMap key, Secret or field, a ``$(VAR)`` left unexpanded) is a ``ValueError``:
on a cluster that container would not start, or would start with a literal ``$(VAR)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    name: str
    namespace: str
    replicas: int
    pod: Doc  # the pod template's spec

    @property
    def containers(self) -> list[Doc]:
        return list(self.pod.get("containers", []))


@dataclass(frozen=True, slots=True)
class PodContext:
    """What the cluster gives one pod: identity, address, CPUs, ConfigMaps and Secrets."""

    name: str
    namespace: str
    ip: str
    ordinal: int | None  # StatefulSet pods only
    cpus: int  # resourceFieldRef limits.cpu / requests.cpu with divisor 1
    config_maps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    labels: Mapping[str, str] = field(default_factory=dict)


def workloads(docs: list[Doc]) -> list[Workload]:
    """Deployments, StatefulSets and Jobs in document order (a Job counts as one pod)."""
    found = []
    for doc in docs:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        spec = doc["spec"]
        replicas = 1 if doc["kind"] == "Job" else int(spec.get("replicas", 1))
        meta = doc["metadata"]
        found.append(Workload(doc["kind"], meta["name"], meta.get("namespace", ""), replicas,
                              spec["template"]["spec"]))
    return found


def config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: {k: str(v) for k, v in doc.get("data", {}).items()}
            for doc in docs if doc.get("kind") == "ConfigMap"}


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``,
    an undefined reference is an error here (Kubernetes would leave it as it is)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if name not in env:
            raise ValueError(f"$({name}) is not defined")
        return env[name]

    return _REFERENCE.sub(replace, text)


def references(text: str) -> set[str]:
    """The names ``text`` refers to as ``$(NAME)``."""
    return {m.group(1) for m in _REFERENCE.finditer(text) if m.group(1)}


def container_env(container: Doc, pod: PodContext) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``envFrom`` sources in order,
    then ``env`` entries in order (each may refer to the ones before it)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_env_source(source, pod))
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
        else:
            env[name] = _value_from(entry["valueFrom"], pod, name)
    return env


def container_argv(container: Doc, env: Mapping[str, str]) -> tuple[str, ...]:
    """``command`` + ``args`` expanded against the container's environment."""
    words = [*container.get("command", []), *container.get("args", [])]
    if not words:
        raise ValueError(f"container {container['name']}: no command (the image's default)")
    try:
        return tuple(expand(str(word), env) for word in words)
    except ValueError as exc:
        raise ValueError(f"container {container['name']}: {exc}") from None


def _env_source(source: Doc, pod: PodContext) -> Mapping[str, str]:
    if "configMapRef" in source:
        return _named(pod.config_maps, source["configMapRef"], "ConfigMap")
    if "secretRef" in source:
        return _named(pod.secrets, source["secretRef"], "Secret")
    raise ValueError(f"unsupported envFrom {source}")


def _named(store: Mapping[str, Mapping[str, str]], ref: Doc, what: str) -> Mapping[str, str]:
    if ref["name"] in store:
        return store[ref["name"]]
    if ref.get("optional"):
        return {}
    raise ValueError(f"{what} {ref['name']} does not exist")


def _value_from(source: Doc, pod: PodContext, name: str) -> str:
    if "configMapKeyRef" in source:
        return _key(pod.config_maps, source["configMapKeyRef"], "ConfigMap", name)
    if "secretKeyRef" in source:
        return _key(pod.secrets, source["secretKeyRef"], "Secret", name)
    if "fieldRef" in source:
        return _field(source["fieldRef"]["fieldPath"], pod, name)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        if ref["resource"] not in ("limits.cpu", "requests.cpu") or str(ref.get("divisor",
                                                                              "1")) != "1":
            raise ValueError(f"{name}: unsupported resourceFieldRef {ref}")
        return str(pod.cpus)
    raise ValueError(f"{name}: unsupported valueFrom {source}")


def _key(store: Mapping[str, Mapping[str, str]], ref: Doc, what: str, name: str) -> str:
    values = _named(store, ref, what)
    if ref["key"] not in values:
        raise ValueError(f"{name}: {what} {ref['name']} has no key {ref['key']}")
    return values[ref["key"]]


def _field(path: str, pod: PodContext, name: str) -> str:
    labels = dict(pod.labels)
    if pod.ordinal is not None:
        labels[POD_INDEX_LABEL] = str(pod.ordinal)
    simple = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "status.podIP": pod.ip}
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
    if match and match.group(1) in labels:
        return labels[match.group(1)]
    raise ValueError(f"{name}: the pod has no field {path}")


def probes(container: Doc) -> Iterator[tuple[str, Doc]]:
    """(kind, probe) for each probe the container declares."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]


def probe_port(container: Doc, probe: Doc) -> int:
    """The TCP port an ``httpGet`` or ``tcpSocket`` probe connects to (named ports resolved)."""
    action = probe.get("httpGet") or probe.get("tcpSocket")
    if action is None:
        raise ValueError(f"container {container['name']}: probe without httpGet/tcpSocket")
    port = action["port"]
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container['name']}: no port named {port!r}")
