"""A small kustomize for machines without ``kubectl``: the subset this project's kustomizations
use (``resources``, ``namespace``, ``images``), and an error for anything else, so it can never
silently render something else than ``kubectl kustomize`` (a test compares the two)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images"}
# kinds without a namespace (kustomize leaves them alone when it sets one)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}

Doc = dict[str, Any]


def build(directory: Path) -> list[Doc]:
    """Every resource of the kustomization in ``directory``, transformed as kustomize does."""
    path = directory / KUSTOMIZATION
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{path}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        docs.extend(build(target) if target.is_dir() else _load(target))
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in _containers(docs):
            container["image"] = _retag(container["image"], image)
    return docs


def _load(path: Path) -> list[Doc]:
    return [copy.deepcopy(doc) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(docs: list[Doc]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in POD_TEMPLATE_KINDS:
            pod = doc["spec"]["template"]["spec"]
            yield from pod.get("initContainers", [])
            yield from pod.get("containers", [])


def _retag(reference: str, image: dict[str, str]) -> str:
    """kustomize ``images``: a reference whose name matches gets ``newName`` / ``newTag``."""
    name, _, tag = reference.partition(":")
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    tag = str(image.get("newTag", tag))
    return f"{name}:{tag}" if tag else name
