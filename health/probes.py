"""Probe I/O: a STUN Binding round trip through a relay's public port, a transceiver ping.

Each returns a ``ProbeResult``; the state machine in ``health.machine`` decides what it means.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Mapping

from fleet.addresses import Addr
from fleet.heartbeats import RelayHeartbeat, TransceiverHeartbeat, is_fresh
from fleet.nodes import HEALTH_TRANSCEIVER_ID
from health.machine import ProbeResult
from relays.stun import pack_binding_request, parse_xor_mapped_address, transaction_id
from relays.ufrag import mint_ufrag
from transceivers.control import ControlError, ControlTimeout, call_sync, request_ping

PROBE_CLIENT_UFRAG = "probe"


def health_username(*, shard: int, key_id: int, key: bytes) -> str:
    """USERNAME ``server:client`` whose server ufrag names the shard's reserved health target."""
    ufrag = mint_ufrag(
        shard=shard, transceiver=HEALTH_TRANSCEIVER_ID, key_id=key_id, key=key,
        nonce=secrets.token_bytes(4),
    )
    return f"{ufrag}:{PROBE_CLIENT_UFRAG}"


def stun_ping(target: Addr, *, username: str, timeout: float) -> tuple[float, Addr]:
    """Send a Binding request to ``target``; return (RTT in s, XOR-MAPPED-ADDRESS); OSError/
    TimeoutError when no matching answer comes in ``timeout``."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    tid = secrets.token_bytes(12)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        started = time.perf_counter()
        deadline = started + timeout
        sock.send(pack_binding_request(tid, username))
        while True:
            sock.settimeout(max(0.001, deadline - time.perf_counter()))
            data = sock.recv(2048)  # TimeoutError when the relay does not answer
            try:
                if transaction_id(data) == tid:
                    return time.perf_counter() - started, parse_xor_mapped_address(data)
            except ValueError:
                continue  # not ours: keep waiting until the deadline


def probe_relay(
    *, public: Addr, shard: int, heartbeats: list[RelayHeartbeat], now: float, max_age: float,
    keyring: Mapping[int, bytes], key_id: int, timeout: float,
) -> ProbeResult:
    """End to end through the public port, plus the relay's own heartbeat."""
    fresh = [b for b in heartbeats if is_fresh(b.sent_at, now=now, max_age=max_age)]
    draining = any(b.draining for b in fresh)
    username = health_username(shard=shard, key_id=key_id, key=keyring[key_id])
    try:
        rtt, _mapped = stun_ping(public, username=username, timeout=timeout)
    except TimeoutError:
        return ProbeResult(False, f"no STUN answer in {timeout:g}s", draining=draining)
    except OSError as exc:  # e.g. ICMP port unreachable: nothing listens
        return ProbeResult(False, f"STUN error: {exc.strerror or exc}", draining=draining)
    if not fresh:
        return ProbeResult(False, "no fresh heartbeat", rtt_ms=rtt * 1000)
    return ProbeResult(True, "ok", rtt_ms=round(rtt * 1000, 3), draining=draining)


def probe_transceiver(
    *, transceiver_id: int, heartbeat: TransceiverHeartbeat | None, now: float, max_age: float,
    timeout: float,
) -> ProbeResult:
    """A request/reply ping over the control queue, and the heartbeat's age.

    The ping decides: a transceiver that answers is alive even when its heartbeat is missing
    (Redis restarted empty, and the daemon re-asserts it with its next beat); failing its
    sessions then would end live calls that are fine."""
    stale = None
    if heartbeat is None or not is_fresh(heartbeat.sent_at, now=now, max_age=max_age):
        age = "none" if heartbeat is None else f"{now - heartbeat.sent_at:.1f}s old"
        stale = f"no fresh heartbeat ({age})"
    started = time.perf_counter()
    try:
        pong = call_sync(request_ping, transceiver_id=transceiver_id, timeout=timeout)
    except ControlTimeout:
        return ProbeResult(False, stale or f"no ping reply in {timeout:g}s")
    except ControlError as exc:
        return ProbeResult(False, stale or f"ping refused: {exc}")
    rtt = (time.perf_counter() - started) * 1000
    capacity = max(1, int(pong.get("capacity") or 1))
    return ProbeResult(
        True, f"ok; {stale}" if stale else "ok", rtt_ms=round(rtt, 3),
        load=int(pong.get("sessions") or 0) / capacity,
        loop_lag_ms=float(pong.get("loop_lag_ms") or 0.0), draining=bool(pong.get("draining")),
        incarnation=str(pong.get("incarnation") or "") or None,
    )
