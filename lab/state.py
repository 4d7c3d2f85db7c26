"""``var/lab/state.json``: every namespace and process a ``lab up`` made, written as it goes,
so ``lab down`` can undo a crashed run. A pid is only signalled while its start time matches."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    name: str
    netns: str
    pid: int
    started: int  # /proc/PID/stat starttime (clock ticks since boot): guards against pid reuse
    stop_signal: int = signal.SIGTERM


@dataclass
class LabState:
    path: Path
    namespaces: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> LabState:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, list(data.get("namespaces", [])),
                   [ProcessRecord(**p) for p in data.get("processes", [])])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"namespaces": self.namespaces,
                                   "processes": [asdict(p) for p in self.processes]}, indent=1))
        tmp.replace(self.path)

    def add_process(self, record: ProcessRecord) -> None:
        self.processes.append(record)
        self.save()


def start_time(pid: int) -> int | None:
    """The process's start time from /proc, ``None`` when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
    if fields[0] == "Z":
        return None
    return int(fields[19])  # field 22: starttime


def is_running(record: ProcessRecord) -> bool:
    return start_time(record.pid) == record.started


def signal_group(record: ProcessRecord, signum: int) -> None:
    """Signal the record's process group (each lab process leads its own session)."""
    if is_running(record):
        try:
            os.killpg(record.pid, signum)
        except ProcessLookupError:
            pass


def stop_processes(records: list[ProcessRecord], grace: float = 8.0) -> list[str]:
    """Each gets its stop signal, newest first; SIGKILL after ``grace``. Returns killed names."""
    for record in reversed(records):
        signal_group(record, record.stop_signal)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_running(r) for r in records):
        time.sleep(0.1)
    killed = []
    for record in records:
        if is_running(record):
            signal_group(record, signal.SIGKILL)
            killed.append(record.name)
    return killed
