"""Reading rendered manifests: Kubernetes' $(VAR) expansion and environment, as pure functions."""

from __future__ import annotations

import pytest

from deploy.manifests import (
    PodContext,
    Workload,
    container_argv,
    container_env,
    expand,
    probe_port,
    workloads,
)

POD = PodContext("transceiver-1", "ns", "10.1.0.7", 1, 2,
                 config_maps={"region": {"BASE": "100", "CODE": "eu-west"}},
                 secrets={"secrets": {"SECRET_KEY": "k"}})


def test_expansion_follows_kubernetes() -> None:
    env = {"A": "1", "B": "x"}
    assert expand("$(A):$(B)", env) == "1:x"
    assert expand("$$(A) costs $$5", env) == "$(A) costs $5"
    with pytest.raises(ValueError, match=r"\$\(C\) is not defined"):
        expand("--id $(C)", env)


def test_env_from_sources_then_entries_with_the_downward_api() -> None:
    container = {
        "name": "transceiver",
        "envFrom": [{"secretRef": {"name": "secrets"}},
                    {"configMapRef": {"name": "absent", "optional": True}}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}},
                {"name": "WORKERS", "valueFrom": {"resourceFieldRef": {
                    "containerName": "transceiver", "resource": "limits.cpu", "divisor": "1"}}},
                {"name": "BASE", "valueFrom": {"configMapKeyRef": {"name": "region",
                                                                   "key": "BASE"}}},
                {"name": "ADVERTISE", "value": "$(POD_IP):5001"}],
        "command": ["python", "manage.py", "run_transceiver"],
        "args": ["--advertise", "$(ADVERTISE)", "--workers", "$(WORKERS)"],
    }
    env = container_env(container, POD)
    assert env == {"SECRET_KEY": "k", "POD_IP": "10.1.0.7", "POD_INDEX": "1", "WORKERS": "2",
                   "BASE": "100", "ADVERTISE": "10.1.0.7:5001"}
    assert container_argv(container, env)[3:] == ("--advertise", "10.1.0.7:5001", "--workers",
                                                  "2")


@pytest.mark.parametrize(("entry", "message"), [
    ({"configMapKeyRef": {"name": "region", "key": "SHARD"}}, "ConfigMap region has no key"),
    ({"secretKeyRef": {"name": "other", "key": "X"}}, "Secret other does not exist"),
    ({"fieldRef": {"fieldPath": "spec.nodeName"}}, "no field spec.nodeName"),
    ({"resourceFieldRef": {"resource": "limits.memory"}}, "unsupported resourceFieldRef"),
])
def test_what_a_cluster_cannot_provide_is_refused(entry: dict[str, object],
                                                  message: str) -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": entry}]}
    with pytest.raises(ValueError, match=message):
        container_env(container, POD)


def test_a_deployment_pod_has_no_ordinal() -> None:
    deployment = PodContext("relay-x", "ns", "10.1.0.8", None, 1, {}, {})
    container = {"name": "c", "env": [{"name": "I", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}}]}
    with pytest.raises(ValueError, match="no field"):
        container_env(container, deployment)


def test_workloads_and_named_probe_ports() -> None:
    docs = [{"kind": "ConfigMap", "metadata": {"name": "x"}},
            {"kind": "Job", "metadata": {"name": "migrate", "namespace": "ns"},
             "spec": {"template": {"spec": {"containers": []}}}},
            {"kind": "StatefulSet", "metadata": {"name": "tx"},
             "spec": {"replicas": 3, "template": {"spec": {"containers": []}}}}]
    assert [(w.kind, w.replicas) for w in workloads(docs)] == [("Job", 1), ("StatefulSet", 3)]
    container = {"name": "c", "ports": [{"name": "admin", "containerPort": 9101}]}
    assert probe_port(container, {"httpGet": {"path": "/livez", "port": "admin"}}) == 9101
    assert probe_port(container, {"tcpSocket": {"port": 8000}}) == 8000
    with pytest.raises(ValueError, match="no port named 'http'"):
        probe_port(container, {"httpGet": {"path": "/", "port": "http"}})
    assert Workload("Job", "j", "", 1, {"containers": [container]}).containers == [container]
