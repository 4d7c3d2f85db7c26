"""CI's checks of the rendered manifests: the Kubernetes OpenAPI schemas (strict, two
versions, offline via ``kubernetes-validate``), the project's own checks (``deploy.checks``)
and each container's command run with ``--help`` (a real entry point of this project)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from deploy.checks import probe_problems, settings_variables, unread_variables
from deploy.manifests import PodContext, Workload, config_maps, container_argv, container_env
from deploy.manifests import workloads as workloads_of
from deploy.render import BASE, K8S

Doc = dict[str, Any]
# the cluster version kubectl here is, and a newer one the schemas ship
KUBERNETES_VERSIONS = ("1.32.0", "1.35.0")
PROJECT_IMAGE = "voice-edge"  # containers of other images (demo Redis/PostgreSQL) are theirs
SECRET_EXAMPLE = K8S / "secret.example.yaml"
SETTINGS = BASE / "signaling_site" / "settings.py"
HELP_TIMEOUT = 120.0


def schema_errors(docs: list[Doc], version: str) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} "
                          f"(Kubernetes {version}): {getattr(exc, 'message', exc)}")
    return errors


def example_secrets(path: Path = SECRET_EXAMPLE) -> dict[str, dict[str, str]]:
    """Secret name -> its keys and example values, from the example the operator copies."""
    doc = yaml.safe_load(path.read_text())
    return {doc["metadata"]["name"]: {k: str(v) for k, v in doc["stringData"].items()}}


def is_project(workload: Workload) -> bool:
    return all(str(c.get("image", "")).split(":")[0].rsplit("/", 1)[-1] == PROJECT_IMAGE
               for c in workload.containers)


def example_pod(workload: Workload, docs: list[Doc], ordinal: int = 0) -> PodContext:
    """A pod of ``workload`` as a cluster would start it, with the example Secret."""
    indexed = workload.kind == "StatefulSet"
    return PodContext(f"{workload.name}-{ordinal}", workload.namespace, "10.1.2.3",
                      ordinal if indexed else None, 1, config_maps(docs), example_secrets())


def project_problems(docs: list[Doc]) -> list[str]:
    """Every project container resolves (env and command line), reads every variable it is
    given, and is probed on ports it listens on."""
    read = settings_variables(SETTINGS.read_text())
    secret_keys = {name: list(data) for name, data in example_secrets().items()}
    problems = []
    for workload in filter(is_project, workloads_of(docs)):
        pod = example_pod(workload, docs)
        argv_of = {}
        for container in workload.containers:
            where = f"{workload.kind}/{workload.name} {container['name']}"
            try:
                argv_of[container["name"]] = container_argv(container,
                                                            container_env(container, pod))
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            unread = unread_variables(container, config_maps(docs), secret_keys, read)
            if unread:
                problems.append(f"{where}: variables nothing reads: {', '.join(unread)}")
        if len(argv_of) == len(workload.containers):
            problems += probe_problems(workload, argv_of)
    return problems


def commands(docs: list[Doc]) -> set[tuple[str, ...]]:
    """Each project container's ``command`` (its entry point, subcommand included)."""
    return {tuple(c["command"]) for w in filter(is_project, workloads_of(docs))
            for c in w.containers}


def run_help(command: tuple[str, ...], python: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command --help`` with the image's ``python`` replaced by ``python``."""
    argv = [python if word == "python" else word for word in command]
    return subprocess.run([*argv, "--help"], cwd=cwd, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT, check=False)
