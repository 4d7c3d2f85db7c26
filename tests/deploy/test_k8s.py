"""The Kubernetes manifests: every overlay renders, validates (strict, two Kubernetes versions)
and passes the project's checks; the checks themselves catch what they are for."""

from __future__ import annotations

import copy
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from deploy import kustomize
from deploy.checks import settings_variables
from deploy.manifests import config_maps, workloads
from deploy.render import render, targets
from deploy.validate import (
    KUBERNETES_VERSIONS,
    SETTINGS,
    commands,
    project_problems,
    run_help,
    schema_errors,
)
from fleet.admin_http import response

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


@cache
def rendered(name: str) -> tuple[Doc, ...]:
    return tuple(render(targets()[name]))


def docs_of(name: str) -> list[Doc]:
    return copy.deepcopy(list(rendered(name)))


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("name", list(targets()))
def test_every_overlay_is_valid_for_two_kubernetes_versions(name: str) -> None:
    docs = docs_of(name)
    assert docs
    for version in KUBERNETES_VERSIONS:
        assert schema_errors(docs, version) == []
    assert project_problems(docs) == []


def test_strict_validation_refuses_an_unknown_field_and_a_wrong_type() -> None:
    docs = docs_of("us-east")
    relay = find(docs, "Deployment", "relay")
    relay["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    find(docs, "Service", "relay")["spec"]["ports"][0]["port"] = "3478"
    errors = schema_errors(docs, KUBERNETES_VERSIONS[0])
    assert len(errors) == 2, errors
    assert any("readynessProbe" in e for e in errors)


def test_project_checks_catch_unread_variables_probes_and_unresolvable_env() -> None:
    docs = docs_of("eu-west")
    find(docs, "ConfigMap", "edge-settings")["data"]["RELAY_THREADS"] = "4"
    tx = find(docs, "StatefulSet", "transceiver")["spec"]["template"]["spec"]["containers"][0]
    relay = find(docs, "Deployment", "relay")["spec"]["template"]["spec"]["containers"][0]
    relay["readinessProbe"]["httpGet"]["port"] = 9999
    tx["env"] = [e for e in tx["env"] if e["name"] != "POD_IP"]  # $(POD_IP) left in args
    problems = project_problems(docs)
    assert any("variables nothing reads: RELAY_THREADS" in p for p in problems)
    assert any("relay readinessProbe: port 9999" in p for p in problems)
    assert any("$(POD_IP) is not defined" in p for p in problems)


def test_settings_variables_are_read_from_the_settings_source() -> None:
    read = settings_variables(SETTINGS.read_text())
    assert {"SECRET_KEY", "UFRAG_KEYS", "DATABASE_URL", "REDIS_URL", "DRAIN_GRACE",
            "POD_INDEX", "TRANSCEIVER_ID_BASE"} <= read
    assert "RELAY_SHARD" not in read  # used only as $(RELAY_SHARD) in the relay's args


def test_probe_paths_are_served() -> None:
    import django.urls

    for name in ("eu-west", "us-east"):
        for workload in workloads(docs_of(name)):
            for c in workload.containers:
                for kind in ("readinessProbe", "livenessProbe"):
                    probe = c.get(kind, {}).get("httpGet")
                    if probe is None:
                        continue
                    if "--admin" in c["args"]:  # a daemon's fleet.admin_http endpoint
                        assert b" 404 " not in response(probe["path"], True).split(b"\r\n")[0]
                    else:
                        django.urls.resolve(probe["path"])  # Resolver404 if signaling has none


def test_roles_are_shaped_as_the_fleet_needs() -> None:
    docs = docs_of("eu-west")
    assert find(docs, "Deployment", "signaling")["spec"]["replicas"] >= 2
    beat = find(docs, "Deployment", "celery-beat")["spec"]
    assert (beat["replicas"], beat["strategy"]["type"]) == (1, "Recreate")
    tx = find(docs, "StatefulSet", "transceiver")["spec"]["template"]["spec"]
    grace = float(config_maps(docs)["edge-settings"]["DRAIN_GRACE"])
    assert tx["terminationGracePeriodSeconds"] >= grace
    pre_stop = tx["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:5] == ["python", "manage.py", "drain", "transceiver", "--reason"]
    assert "--wait" in pre_stop
    relay = find(docs, "Service", "relay")["spec"]
    assert (relay["type"], relay["externalTrafficPolicy"]) == ("LoadBalancer", "Local")
    policy = find(docs, "NetworkPolicy", "transceiver")["spec"]
    sources = [rule["from"][0]["podSelector"]["matchLabels"] for rule in policy["ingress"]]
    assert sources == [{"app.kubernetes.io/component": "relay"},
                       {"app.kubernetes.io/plane": "control"}]
    for region in ("us-east", "ap-south"):  # the control plane runs once, in the home region
        names = {d["metadata"]["name"] for d in docs_of(region)}
        assert not names & {"signaling", "celery-beat", "celery-worker", "migrate"}
    bases = {config_maps(docs_of(r))["edge-region"]["TRANSCEIVER_ID_BASE"]
             for r in ("eu-west", "us-east", "ap-south")}
    assert len(bases) == 3


def test_every_container_command_is_an_entry_point_of_this_project() -> None:
    """Each command (and the transceiver's preStop hook) runs with --help."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    every = sorted(set().union(*(commands(list(rendered(n))) for n in targets())))
    assert ("python", "manage.py", "run_transceiver") in every
    every.append(("python", "manage.py", "drain"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_help(c, sys.executable, ROOT), every))
    for command, done in zip(every, results, strict=True):
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (command, done.stderr)
    broken = run_help(("python", "manage.py", "run_relays"), sys.executable, ROOT)
    assert broken.returncode != 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", list(targets()))
def test_the_python_renderer_matches_kubectl(name: str) -> None:
    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    ours = sorted(kustomize.build(targets()[name]), key=key)
    assert ours == sorted(render(targets()[name]), key=key)


def test_the_python_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: []\n")
    with pytest.raises(ValueError, match=r"unsupported kustomization fields \['patches'\]"):
        kustomize.build(tmp_path)
