"""What users would pick instead of the relay, run beside it: a C ``recvmmsg``/``sendmmsg``
forwarder (``bench/cfwd.c``), coturn relaying TURN channel data, and the C load generator
(``bench/udpblast.c``) that drives every server the same way. Both C programs are compiled with
gcc at bench time into a temporary directory; coturn is Debian's ``turnserver`` (its rows are
skipped, with a note, where it is not installed).

Load: ``udpblast`` sends open loop, round-robin over all flows, as fast as its core lets it (a
server that gets its core stays saturated; the kernel drops the excess at its queue), and
counts what comes back; the server's CPU time (all threads,
``/proc``) is sampled by the same program over the same window. The figure compared is
datagrams forwarded per CPU-second of the server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from aioice import stun

from bench.common import pin

HERE = Path(__file__).parent
WINDOW = 0  # datagrams in flight; 0: open loop
TURN_CHANNEL = 0x4000  # RFC 8656 section 12: channel numbers 0x4000-0x4FFF


@functools.cache
def build_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-c-"))


@functools.cache
def compiled(name: str) -> Path:
    """``bench/<name>.c`` compiled with ``gcc -O2`` (once per run)."""
    out = build_dir() / name
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / f"{name}.c")], check=True,
                   timeout=60)
    return out


def coturn() -> str | None:
    return shutil.which("turnserver")


def coturn_version() -> str:
    path = coturn()
    if path is None:
        return "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "coturn"],
                             capture_output=True, text=True, timeout=10).stdout
        if out:
            return out
    return "installed"


def _preexec(cpu: int | None) -> None:
    os.setpgrp()
    if cpu is not None:
        pin(cpu)


def start_cfwd(public: int, internal: int, target: int, cpu: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(compiled("cfwd")), str(public), str(internal), str(target)],
                            preexec_fn=lambda: _preexec(cpu))


def start_coturn(port: int, cpu: int, workdir: Path) -> subprocess.Popen[bytes]:
    """coturn on 127.0.0.1:``port``: UDP only, no auth, loopback peers, one relay thread."""
    relay_ports = (port % 1000) * 20 + 40000
    path = coturn()
    assert path is not None
    args = [path, "-n", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "--no-tcp-relay",
            "--no-auth", "--allow-loopback-peers", "--listening-ip", "127.0.0.1",
            "--relay-ip", "127.0.0.1", "--listening-port", str(port),
            "--min-port", str(relay_ports), "--max-port", str(relay_ports + 999),
            "--relay-threads", "1", "--realm", "bench", "--log-file", str(workdir / "turn.log"),
            "--simple-log", "--pidfile", str(workdir / "turn.pid"),
            "--db", str(workdir / "turndb")]
    proc = subprocess.Popen(args, preexec_fn=lambda: _preexec(cpu), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # listening once an Allocate gets an answer
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.2)
            probe.connect(("127.0.0.1", port))
            message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            with contextlib.suppress(OSError):
                probe.send(bytes(message))
                probe.recv(2048)
                return proc
    stop(proc)
    raise RuntimeError("coturn did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def turn_request(sock: socket.socket, method: stun.Method, **attributes: object) -> stun.Message:
    """One TURN request on a connected socket (no auth: coturn runs with --no-auth)."""
    message = stun.Message(method, stun.Class.REQUEST)
    for name, value in attributes.items():
        message.attributes[name.replace("_", "-").upper()] = value
    for _ in range(10):
        try:
            sock.send(bytes(message))
            reply = stun.parse_message(sock.recv(2048))
        except TimeoutError:
            continue
        except ConnectionRefusedError:
            # ICMP port unreachable: nothing had the port bound at that instant. Right after
            # answering its first Binding, coturn 4.6.1 refused the next request in 7 of 300
            # starts (its listener sockets being set up); UDP counts that as a lost datagram.
            time.sleep(0.1)
            continue
        if reply.message_class != stun.Class.RESPONSE:
            raise RuntimeError(f"TURN {method.name} failed: {reply.attributes}")
        return reply
    raise RuntimeError(f"TURN {method.name}: no answer")


def turn_channel(sock: socket.socket, peer: tuple[str, int], channel: int) -> tuple[str, int]:
    """Allocate a UDP relay (RFC 8656 section 7) and bind ``channel`` to ``peer`` (section 11);
    return the relayed address."""
    timeout = sock.gettimeout()
    sock.settimeout(0.5)
    reply = turn_request(sock, stun.Method.ALLOCATE, requested_transport=17 << 24,
                         lifetime=600)
    relayed = reply.attributes["XOR-RELAYED-ADDRESS"]
    turn_request(sock, stun.Method.CHANNEL_BIND, channel_number=channel, xor_peer_address=peer)
    sock.settimeout(timeout)
    return relayed[0], relayed[1]


def channel_data(channel: int, payload: bytes) -> bytes:
    """RFC 8656 section 12.4: channel number, length, data (200 bytes: no padding needed)."""
    return struct.pack("!HH", channel, len(payload)) + payload


def blast(lines: list[tuple[socket.socket, tuple[str, int] | None, bytes]], pids: list[int], *,
          seconds: float, warmup: float, cpu: int, sinks: tuple[socket.socket, ...] = ()
          ) -> tuple[float, float, float]:
    """Run ``udpblast`` over ``lines`` (socket, destination or None if connected, payload) and
    count what arrives on their sockets and ``sinks``: (datagrams forwarded per second, per
    CPU-second of ``pids``, their CPU utilisation)."""
    spec = "".join(
        f"{sock.fileno()} {dest[0] if dest else '-'} {dest[1] if dest else 0} {payload.hex()}\n"
        for sock, dest, payload in lines) + "".join(f"{s.fileno()} r 0 00\n" for s in sinks)
    fds = sorted({sock.fileno() for sock, _, _ in lines} | {s.fileno() for s in sinks})
    out = subprocess.run(
        [str(compiled("udpblast")), str(seconds), str(warmup), str(WINDOW),
         ",".join(map(str, pids))], input=spec, capture_output=True, text=True, pass_fds=fds,
        preexec_fn=lambda: pin(cpu), timeout=seconds + 30, check=True)
    received, wall, cpu_s, _ = out.stdout.split()
    count, wall_s, used = int(received), float(wall), float(cpu_s)
    return count / wall_s, count / max(used, 1e-9), used / wall_s
