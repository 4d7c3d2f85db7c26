"""Project checks on rendered manifests, beyond the OpenAPI schemas: every variable a
container is given is read by the settings (or used in its own command line), every probe hits
a port the command listens on. Pure functions; the tests feed them the settings' source."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import Any

from deploy.manifests import Workload, probe_port, probes, references

Doc = dict[str, Any]
ENV_READERS = {"env_str", "env_int", "env_float", "env_bool", "env_list"}
# flags whose HOST:PORT (or PORT) value is a TCP port the process listens on
LISTEN_FLAGS = {"--admin", "-p", "--port"}


def settings_variables(source: str) -> set[str]:
    """Names the settings module reads: the first argument of each ``env_*("NAME", ...)``."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ENV_READERS and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def unread_variables(container: Doc, config_maps: Mapping[str, Mapping[str, str]],
                     secret_keys: Mapping[str, Iterable[str]], read: set[str]) -> list[str]:
    """Variables the container gets that nothing reads: not in ``read`` (the settings) and not
    referred to as ``$(NAME)`` in its command or args."""
    used = set().union(*(references(str(word)) for word in
                         [*container.get("command", []), *container.get("args", [])]))
    given: list[str] = [entry["name"] for entry in container.get("env", [])]
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            given += list(config_maps.get(source["configMapRef"]["name"], {}))
        if "secretRef" in source:
            given += list(secret_keys.get(source["secretRef"]["name"], []))
    return sorted({name for name in given if name not in read and name not in used})


def listening_ports(argv: Iterable[str]) -> set[int]:
    """TCP ports a command line says it listens on (``--admin H:P``, ``-p P``)."""
    words = list(argv)
    ports = set()
    for flag, value in zip(words, words[1:], strict=False):
        if flag in LISTEN_FLAGS:
            ports.add(int(value.rsplit(":", 1)[-1]))
    return ports


def probe_problems(workload: Workload, argv_of: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Probes whose port the container's command does not listen on, or that are not HTTP GET
    or TCP (``argv_of``: container name -> its expanded command line)."""
    problems = []
    for container in workload.containers:
        listening = listening_ports(argv_of[container["name"]])
        for kind, probe in probes(container):
            try:
                port = probe_port(container, probe)
            except ValueError as exc:
                problems.append(f"{workload.name} {kind}: {exc}")
                continue
            if port not in listening:
                problems.append(f"{workload.name} {kind}: port {port} is not one the command "
                                f"listens on {sorted(listening)}")
    return problems


def http_probe_paths(workload: Workload) -> list[tuple[str, str, str]]:
    """(container, probe kind, path) of every httpGet probe."""
    return [(c["name"], kind, probe["httpGet"]["path"]) for c in workload.containers
            for kind, probe in probes(c) if "httpGet" in probe]
