"""Starting programs on lab hosts: the core's own (PostgreSQL, Redis) as argv lists, and the
``Launcher``, which starts any ``ProcSpec`` inside its namespace with ``ip netns exec``, logs to
``var/lab/logs/`` and records it in the state. The fleet's specs come from the manifests
(``lab.manifests``)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.plan import PREFIX
from lab.state import LabState, ProcessRecord, start_time


@dataclass(frozen=True, slots=True)
class ProcSpec:
    name: str
    host: str
    argv: tuple[str, ...]
    stop_signal: int = signal.SIGTERM
    env: Mapping[str, str] = field(default_factory=dict)


def postgres_argv(bin_dir: Path, data: Path, address: str, port: int) -> tuple[str, ...]:
    """The PostgreSQL server as the ``postgres`` OS user, listening on the core's address."""
    return ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
            str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
            "-c", f"listen_addresses={address}", "-c", f"unix_socket_directories={data}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def redis_argv(binary: Path, workdir: Path, address: str, port: int) -> tuple[str, ...]:
    return (str(binary), "--bind", address, "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", str(workdir))


@dataclass
class Launcher:
    """Starts processes in namespaces; each leads its own session and is recorded at once."""

    state: LabState
    env: Mapping[str, str]
    logs: Path
    cwd: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, spec: ProcSpec) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{spec.name}.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", PREFIX + spec.host, *spec.argv],
                env={**self.env, **spec.env}, cwd=self.cwd, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        started = start_time(proc.pid) or 0
        self.state.add_process(ProcessRecord(spec.name, PREFIX + spec.host, proc.pid, started,
                                             spec.stop_signal))
        self.running[spec.name] = proc
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float,
            env: Mapping[str, str] | None = None) -> str:
        """A one-shot command on ``host``; its output, or ``RuntimeError`` with the tail."""
        proc = subprocess.run(["ip", "netns", "exec", PREFIX + host, *argv],
                              env={**self.env, **(env or {})}, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(f"{argv[0]} {' '.join(argv[1:3])} on {host} failed: {tail}")
        return proc.stdout

    def exited(self) -> list[str]:
        return [name for name, proc in self.running.items() if proc.poll() is not None]

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
