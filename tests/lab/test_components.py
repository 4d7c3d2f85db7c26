"""Each lab host runs its pod of the rendered manifests: the container's command, args and
environment, with what a cluster would provide substituted."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from deploy.render import OVERLAYS, render
from lab.components import postgres_argv
from lab.configs import Secrets
from lab.manifests import PodRun, image_env, pod_runs
from lab.netns import LabError
from lab.plan import build_plan
from lab.state import LabState, ProcessRecord, is_running, start_time
from lab.up import pod_runs as lab_pod_runs

SECRETS = Secrets("k" * 50, "1:" + "u" * 40, "pw")
REGIONS = ("eu-west", "us-east", "ap-south")


def rendered() -> dict[str, list[dict[str, Any]]]:
    return {region: render(OVERLAYS / region) for region in REGIONS}


def runs(var: Path = Path("/v")) -> dict[str, PodRun]:
    return {r.name: r for r in lab_pod_runs(build_plan(), var, SECRETS, rendered())}


def flag(run: PodRun, name: str) -> str:
    return run.argv[run.argv.index(name) + 1]


def test_every_pod_of_the_overlays_has_its_lab_host() -> None:
    by_name = runs()
    assert [r.name for r in by_name.values() if r.one_shot] == [
        "migrate", "region-eu-west", "region-us-east", "region-ap-south"]
    relay = by_name["relay-us-east"]
    assert relay.argv[1:3] == ("manage.py", "run_relay")
    assert flag(relay, "--shard") == "2" and flag(relay, "--region") == "us-east"
    assert flag(relay, "--public") == "0.0.0.0:3478"
    assert flag(relay, "--advertise") == "198.18.2.10:3478"  # the site's edit of edge-region
    assert flag(relay, "--internal-advertise") == "10.2.0.10:4478"  # POD_IP
    assert flag(relay, "--workers") == "1"  # resourceFieldRef limits.cpu on a lab host
    xcvr = by_name["tx-ap-south-2"]
    assert (xcvr.env["TRANSCEIVER_ID_BASE"], xcvr.env["POD_INDEX"]) == ("300", "1")
    assert flag(xcvr, "--advertise") == "10.3.0.22:5001"
    assert xcvr.stop_signal == signal.SIGINT
    assert xcvr.readiness is not None and (xcvr.readiness.port, xcvr.readiness.path) == (
        9101, "/readyz")
    assert by_name["sig-2"].argv[1:3] == ("-m", "signaling_site.http_server")
    assert by_name["sig-2"].readiness is not None
    assert by_name["sig-2"].readiness.host_header == "localhost"
    assert by_name["celery-beat"].host == "core" and by_name["celery-worker"].host == "worker"
    assert sum(1 for r in by_name.values() if "beat" in r.argv) == 1
    assert flag(by_name["celery-beat"], "--schedule") == (
        "/v/hosts/core/volumes/tmp/celerybeat-schedule")  # its emptyDir
    assert len(by_name) == 4 + 3 + 6 + 2 + 2
    for run in by_name.values():
        assert run.argv[0] != "python"
        assert run.env["SECRET_KEY"] == SECRETS.secret_key
        assert run.env["PYTHONUNBUFFERED"] == "1"  # the image's ENV


def test_a_project_under_an_emptydir_mount_keeps_its_python(monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """A clone under /tmp (the beat's emptyDir): only the manifest's words are re-pointed at the
    host's stand-in directory, never the venv's python that replaces the image's."""
    python = "/tmp/clone/.venv/bin/python"
    monkeypatch.setattr("lab.up.sys.executable", python)
    by_name = runs()
    assert by_name["celery-beat"].argv[0] == python
    assert flag(by_name["celery-beat"], "--schedule") == (
        "/v/hosts/core/volumes/tmp/celerybeat-schedule")


def test_the_lab_transceiver_ids_are_the_overlays() -> None:
    by_name = runs()
    for region in build_plan().regions:
        from_manifests = tuple(
            int(by_name[f"tx-{region.code}-{n}"].env["TRANSCEIVER_ID_BASE"])
            + int(by_name[f"tx-{region.code}-{n}"].env["POD_INDEX"]) for n in (1, 2))
        assert from_manifests == region.transceiver_ids()


def test_a_manifest_that_would_not_start_fails_the_lab() -> None:
    docs = rendered()
    relay = next(d for d in docs["us-east"] if d["metadata"]["name"] == "relay"
                 and d["kind"] == "Deployment")
    env = relay["spec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "RELAY_SHARD"]
    kwargs: dict[str, Any] = {"secret": {}, "site": {r: {} for r in REGIONS}, "python": "py",
                              "base": Path("/b"), "var": Path("/v"), "image": {}}
    with pytest.raises(LabError, match=r"relay-us-east: Deployment/relay would not start: "
                                       r"container relay: \$\(RELAY_SHARD\) is not defined"):
        pod_runs(build_plan(), docs, **kwargs)
    region = next(d for d in docs["eu-west"] if d["metadata"]["name"] == "edge-region")
    del region["data"]["TRANSCEIVER_ID_BASE"]
    with pytest.raises(LabError, match="ConfigMap edge-region has no key TRANSCEIVER_ID_BASE"):
        pod_runs(build_plan(), docs, **kwargs)
    sts = next(d for d in docs["eu-west"] if d["kind"] == "StatefulSet")
    sts["spec"]["replicas"] = 3
    with pytest.raises(LabError, match="3 replicas, the lab 2 hosts"):
        pod_runs(build_plan(), {"eu-west": docs["eu-west"], "us-east": [], "ap-south": []},
                 **kwargs)


def test_image_env_is_the_final_stages() -> None:
    text = "FROM a AS b\nENV X=1\nFROM c\nENV PATH=/v:$PATH \\\n    Y=2 \\\n    Z=3\n"
    assert image_env(text) == {"Y": "2", "Z": "3"}
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert image_env(dockerfile)["PYTHONUNBUFFERED"] == "1"


def test_postgres_runs_as_postgres_on_the_core_address() -> None:
    argv = postgres_argv(Path("/pg/bin"), Path("/d"), "10.0.0.10", 5432)
    assert argv[:2] == ("setpriv", "--reuid=postgres")
    assert "listen_addresses=10.0.0.10" in argv


def test_state_round_trip_and_pid_reuse_guard(tmp_path: Path) -> None:
    import os

    state = LabState(tmp_path / "state.json", namespaces=["vel-a"])
    me = ProcessRecord("me", "vel-a", os.getpid(), start_time(os.getpid()) or 0)
    state.add_process(me)
    loaded = LabState.load(tmp_path / "state.json")
    assert loaded.namespaces == ["vel-a"] and loaded.processes == [me]
    assert is_running(me)
    assert not is_running(ProcessRecord("old", "vel-a", os.getpid(), me.started - 1))


def write_lab_files(var: Path) -> None:
    import json

    from lab import manifests

    var.mkdir(parents=True, exist_ok=True)
    (var / "secrets.json").write_text(json.dumps({
        "SECRET_KEY": SECRETS.secret_key, "UFRAG_KEYS": SECRETS.ufrag_keys,
        "DB_PASSWORD": SECRETS.db_password}))
    manifests.save(var / "manifests.json", rendered())


def test_an_operator_restart_uses_ups_pod_and_host_directory(tmp_path: Path) -> None:
    from lab.operate import fleet_spec

    write_lab_files(tmp_path)
    spec = fleet_spec(tmp_path, "relay-us-east")
    first = runs(tmp_path)["relay-us-east"]
    assert spec.argv == first.argv
    assert spec.env["EDGE_VAR_DIR"] == str(tmp_path / "hosts" / "relay-us-east")
    assert spec.env["REDIS_URL"] == "redis://10.0.0.10:6379/0"
    assert (tmp_path / "hosts" / "relay-us-east").is_dir()


def test_an_unknown_process_name_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    from lab.operate import fleet_spec

    write_lab_files(tmp_path)
    with pytest.raises(LabError, match="no fleet process 'relay-mars'.*sig-1"):
        fleet_spec(tmp_path, "relay-mars")
    with pytest.raises(LabError, match="no fleet process 'migrate'"):  # a Job is not restarted
        fleet_spec(tmp_path, "migrate")
