"""Render a kustomization: ``kubectl kustomize`` when kubectl is installed, else the project's
own subset (``deploy.kustomize``), which a test holds to kubectl's output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from deploy import kustomize

BASE = Path(__file__).resolve().parent.parent
K8S = BASE / "deploy" / "k8s"
OVERLAYS = K8S / "overlays"
RENDER_TIMEOUT = 60.0


def regions() -> list[str]:
    """The overlays, one per region."""
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / kustomize.KUSTOMIZATION).exists())


def targets() -> dict[str, Path]:
    """Every kustomization CI renders: each region's overlay and the demo data stores."""
    return {**{region: OVERLAYS / region for region in regions()}, "demo": K8S / "demo"}


def target_dir(name: str) -> Path:
    found = targets().get(name)
    if found is None:
        raise ValueError(f"no overlay {name!r}: one of {', '.join(targets())}")
    return found


def render_text(directory: Path, *, kubectl: str | None = None) -> str:
    """The rendered YAML stream; ``kubectl`` (default: found on PATH) or the Python subset."""
    kubectl = kubectl if kubectl is not None else shutil.which("kubectl")
    if kubectl:
        return subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                              text=True, check=True, timeout=RENDER_TIMEOUT).stdout
    return yaml.safe_dump_all(kustomize.build(directory), sort_keys=True)


def render(directory: Path, *, kubectl: str | None = None) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(directory, kubectl=kubectl)) if doc]
