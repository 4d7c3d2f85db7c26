"""Shared pieces of the benchmarks: the result row, the table, percentiles, CPU pinning."""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
RELAY_CPU = 0  # the system under test
ENDPOINT_CPU = 1  # load generators, echo targets, clients


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure beside its same-run baseline, and the target it is held to."""

    name: str
    value: float
    unit: str
    baseline: float | None = None  # same traffic without the component under test
    ratio: float | None = None  # value / baseline (or the ratio the target is stated in)
    target: str = ""
    met: bool | None = None  # None: informational, no target
    note: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _threads(pid: int) -> list[int]:
    """Every thread of process ``pid`` (0: this one): Linux keeps an affinity per thread, and a
    thread started before a process is pinned keeps floating."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid or os.getpid()}/task")]
    except FileNotFoundError:
        return [pid]


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def pin(cpu: int, pid: int = 0) -> None:
    """Pin ``pid`` (0: this process), every thread of it, to ``cpu`` when the machine has it;
    a no-op otherwise."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        _set_affinity(pid, {cpu})


def unpin(pid: int = 0) -> None:
    if hasattr(os, "sched_setaffinity"):
        _set_affinity(pid, set(range(os.cpu_count() or 1)))


def udp_datagram(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """IPv4 + UDP headers around ``payload``, for a raw socket to send from any source (don't
    fragment, as Linux sends UDP; UDP checksum 0: none, RFC 768; the kernel fills in the IP
    header's checksum and identification)."""
    length = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def merge_runs(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per benchmark row of several runs of the same benchmarks (``--repeat``, an odd
    number): the median value and baseline (NaN runs left out), the median of the runs' own
    ratios (each paired within its run, so not value / baseline), met when most runs met the
    target, and each run's value and ratio in the note, before the last run's own note."""
    if len(runs) == 1:
        return list(runs[0])
    names = list(dict.fromkeys(row.name for rows in runs for row in rows))
    merged = []
    for name in names:
        rows = [row for run in runs for row in run if row.name == name]
        value = median([row.value for row in rows if not math.isnan(row.value)] or [math.nan])
        baselines = [row.baseline for row in rows if row.baseline is not None]
        ratios = [row.ratio for row in rows if row.ratio is not None]
        verdicts = [row.met for row in rows if row.met is not None]
        met = sum(verdicts) * 2 > len(verdicts) if verdicts else None
        values = ", ".join(_fmt(row.value) for row in rows)
        note = f"median of {len(rows)} runs ({values})"
        if ratios:
            note += f"; ratios {', '.join(_fmt(r) for r in ratios)}"
        if verdicts:
            note += f"; met in {sum(verdicts)} of {len(verdicts)}"
        merged.append(Row(name, value, rows[0].unit, median(baselines) if baselines else None,
                          median(ratios) if ratios else None, rows[0].target, met,
                          f"{note}; last run: {rows[-1].note}" if rows[-1].note else note))
    return merged


def format_table(rows: Iterable[Row]) -> str:
    """Rows as one aligned plain-text (and Markdown-compatible) table."""
    header = ("benchmark", "value", "unit", "baseline", "ratio", "target", "met", "note")
    lines = [header]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        lines.append((row.name, _fmt(row.value), row.unit, _fmt(row.baseline),
                      _fmt(row.ratio), row.target or "-", met, row.note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def conditions() -> str:
    """Date, machine and load: the context every table is printed with."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu}; {os.cpu_count()} CPUs; "
            f"Linux {platform.release()}; Python {sys.version.split()[0]}; "
            f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}{guest_halt_poll()}")


HALT_POLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
CPUIDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"


def guest_halt_poll() -> str:
    """The longest halt-poll window of a VM guest whose cpuidle driver is haltpoll, as the
    conditions line's "; guest halt poll max N us"; "" elsewhere (the governor's parameter
    file exists wherever it is built in, bare metal included).

    It is how long an idle vCPU may poll before it halts, i.e. exits to the hypervisor (the
    governor adapts the window below it). At 0 every wake-up of an idle core costs an exit and
    an interrupt from the host: on a Firecracker VM that set it to 0 on its kernel command
    line, ~85 us per process hop in the relay's latency rows against ~10 us at 1 ms (README,
    "Issue 15, fifth round")."""
    try:
        with open(CPUIDLE_DRIVER) as f:
            if f.read().strip() != "haltpoll":
                return ""
        with open(HALT_POLL) as f:
            return f"; guest halt poll max {int(f.read()) / 1000:g} us"
    except (OSError, ValueError):
        return ""


def write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
