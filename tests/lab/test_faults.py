"""Faults on the lab's fleet, injected the way they happen to hosts: a NAT that rebinds, a relay
cut off from Redis, a relay restarted, a transceiver host and a signaling host dying. Each test
keeps a real call (or a loop of offers) going through the fault, prints its figures and puts
back what it broke (an operator's restart of the same command), so they share one lab."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from fleet.heartbeats import RelayHeartbeat
from fleet.keys import relay_heartbeat_key
from lab import operate
from lab.client import offer_sdp
from lab.netns import inside
from lab.plan import PREFIX, REDIS_PORT, RELAY_PUBLIC_PORT, build_plan, private_address
from lab.up import http_json, redis_get
from tests.lab.conftest import MIN_ECHO, PROBE_INTERVAL, VAR, Lab
from whip.client import bearer, http_request

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

FRAME = 0.02  # seconds of audio per echoed frame
FLOWING = 10  # echoed RTP packets in a row: audio flows again
REBIND_PORTS = "40000-40999"  # the NAT's new source ports after a rebinding
REBIND_TARGET = 7.0  # s: the caller's next consent check (aiortc: every 4-6 s) + a round trip
RELAY_RESUME_MAX = 0.2  # seconds from a restarted relay listening to echo flowing
REDIS_CUT = 10.0  # seconds a relay host cannot reach Redis
EXIT_GRACE = 10.0  # s from a drained transceiver leaving the fleet to its process being gone
MAX_IN_FLIGHT_ERRORS = 2  # offers cut off by a signaling host's death


@dataclass
class HeldCall:
    """A ``lab.client --hold`` caller: what it announced when connected, then its result."""

    proc: subprocess.Popen[str]
    connected: dict[str, Any]

    def finish(self, timeout: float = 60.0, *, now: bool = False) -> dict[str, Any]:
        """The caller's result once its tone ends (``now``: it ends the call at once)."""
        if now:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err[-3000:]
        return dict(json.loads(out.strip().splitlines()[-1])["held"])


@contextmanager
def held_call(lab: Lab, continent: str, seconds: float) -> Iterator[HeldCall]:
    proc = lab.start_client(client_of(lab, continent)["netns"], "--hold", str(seconds))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            proc.wait(10)
            pytest.fail(f"no call from {continent}: {proc.stderr.read() if proc.stderr else ''}")
        yield HeldCall(proc, json.loads(line)["connected"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def client_of(lab: Lab, continent: str) -> dict[str, Any]:
    return next(c for c in lab.clients() if c["continent"] == continent)


def flowing_at(times: list[float], since: float) -> float | None:
    """When the FLOWING-th packet after ``since`` arrived (None: it never did)."""
    after = [t for t in times if t > since]
    return after[FLOWING - 1] if len(after) >= FLOWING else None


def first_after(times: list[float], since: float) -> float | None:
    return next((t for t in times if t > since), None)


def echo_share(tone_times: list[float], start: float, end: float) -> float:
    """Echoed tone frames that arrived in [start, end) / the frames that span would carry."""
    return sum(1 for t in tone_times if start <= t < end) * FRAME / (end - start)


def largest_gap(times: list[float], start: float, end: float) -> float:
    inside_ = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in zip(inside_, inside_[1:], strict=False))


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def relay_heartbeat(lab: Lab, region: str) -> RelayHeartbeat | None:
    """The region's relay (worker 0) heartbeat as stored in Redis on core."""
    shard = int(lab.data["relays"][region]["shard"])
    raw = redis_get(build_plan(), relay_heartbeat_key(shard, 0))
    return None if raw is None else RelayHeartbeat.from_json(raw)


def relay_heartbeat_at(lab: Lab, region: str) -> float:
    beat = relay_heartbeat(lab, region)
    return 0.0 if beat is None else beat.sent_at


def relay_counters(lab: Lab, region: str) -> dict[str, int]:
    beat = relay_heartbeat(lab, region)
    return {} if beat is None else dict(beat.counters)


# NAT rebinding (measured first: it does not change the fleet) -------------------------------


def test_nat_rebinding_mid_call(lab: Lab, report: Callable[[str], None]) -> None:
    """The eu caller's NAT forgets its mapping and picks a new source port mid-call: the echo
    comes back without a new offer once the caller's next consent check has reached the
    transceiver from the new port (transceivers.aiortc_hook.MuxConnection.check_complete)."""
    seconds = 12.0
    counters = relay_counters(lab, "eu-west")
    with held_call(lab, "eu", seconds) as call:
        time.sleep(2.0)
        rebound = time.monotonic()
        try:
            deleted = operate.renat("eu", REBIND_PORTS)
            result = call.finish()
        finally:
            operate.renat("eu", None)
    end = float(call.connected["at"]) + seconds  # the tone's end
    rtp, tones = result["rtp_times"], result["tone_times"]
    before = echo_share(tones, rebound - 1.5, rebound)
    resumed = flowing_at(rtp, rebound + 0.1)
    after = echo_share(tones, rebound, end)
    took = None if resumed is None else resumed - rebound
    moved = {k: v - counters.get(k, 0) for k, v in relay_counters(lab, "eu-west").items()
             if v != counters.get(k, 0)}
    figure = (f"NAT rebinding (eu -> eu-west, {deleted} conntrack entries deleted, new ports "
              f"{REBIND_PORTS}): echo {before:.0%} before; "
              + (f"flowing again {took:.2f}s after" if took is not None else
                 f"not back in the {end - rebound:.1f}s of tone that followed")
              + f" (echo {after:.0%} after the rebinding; largest RTP gap "
              f"{largest_gap(rtp, rebound, end):.2f}s; relay counters meanwhile {moved})")
    report(f"[lab test] {figure}")
    assert deleted >= 1, "the caller had no NAT mapping to forget"
    assert before >= MIN_ECHO, result["echo_ratio"]
    assert took is not None and took <= REBIND_TARGET, figure


# Redis cut off from one relay host ----------------------------------------------------------


def test_relay_cut_off_from_redis_keeps_forwarding(lab: Lab,
                                                   report: Callable[[str], None]) -> None:
    """relay-ap-south drops its traffic to core:6379 for REDIS_CUT s: the asia call through it
    keeps its echo, and the relay's heartbeat is back after."""
    core = private_address(build_plan(), "core")
    with held_call(lab, "asia", REDIS_CUT + 30.0) as call:
        time.sleep(2.0)
        cut = time.monotonic()
        operate.block("relay-ap-south", core, REDIS_PORT)
        try:
            time.sleep(REDIS_CUT)
            beat = relay_heartbeat(lab, "ap-south")  # None: its key expired
            stale = None if beat is None else time.time() - beat.sent_at
        finally:
            operate.unblock("relay-ap-south")
        healed, healed_wall = time.monotonic(), time.time()
        while relay_heartbeat_at(lab, "ap-south") < healed_wall:
            assert time.monotonic() - healed < 15.0, "the relay's heartbeat did not come back"
            time.sleep(0.02)
        beat_back = time.monotonic() - healed
        result = call.finish(now=True)
    during = echo_share(result["tone_times"], cut + 0.2, healed)
    gap = largest_gap(result["rtp_times"], cut, healed)
    report(f"[lab test] relay-ap-south cut off from Redis {REDIS_CUT:g}s: asia echo "
           f"{during:.1%} during the cut (largest RTP gap {gap * 1000:.0f} ms); its heartbeat "
           + ("expired from Redis" if stale is None else f"{stale:.1f}s old")
           + f" at the end of the cut, fresh again {beat_back:.2f}s after")
    assert stale is None or stale > 3.0, "Redis was not cut off"  # it beats every ~1 s
    assert during >= MIN_ECHO
    assert beat_back < 10.0


# a relay restarted on its host --------------------------------------------------------------


def udp_listening(netns: str, address: str, port: int) -> bool:
    """A UDP socket bound to ``address:port`` (or the wildcard, as the relay's pod binds it) in
    ``netns`` (its /proc/net/udp, read there)."""
    want = {f"{struct.unpack('<I', socket.inet_aton(a))[0]:08X}:{port:04X}"
            for a in (address, "0.0.0.0")}
    with inside(netns):
        table = Path("/proc/thread-self/net/udp").read_text()
    return any(line.split()[1] in want for line in table.splitlines()[1:])


def test_relay_restarted_mid_call_resumes_from_redis(lab: Lab,
                                                     report: Callable[[str], None]) -> None:
    """kill -9 relay-us-east and start it again with its command: the na call's echo is back
    within RELAY_RESUME_MAX of the new relay listening (its flows are in Redis on core)."""
    public = str(lab.data["relays"]["us-east"]["public"]).rsplit(":", 1)[0]
    netns = PREFIX + "relay-us-east"
    assert udp_listening(netns, public, RELAY_PUBLIC_PORT)
    with held_call(lab, "na", 60.0) as call:
        time.sleep(2.0)
        killed = time.monotonic()
        operate.kill(VAR, "relay-us-east")
        # the thread-group leader reports gone before its last thread has closed the sockets
        while udp_listening(netns, public, RELAY_PUBLIC_PORT):
            assert time.monotonic() - killed < 5.0, "the killed relay still listens"
            time.sleep(0.002)
        operate.start(VAR, "relay-us-east")
        while not udp_listening(netns, public, RELAY_PUBLIC_PORT):
            assert time.monotonic() - killed < 30.0, "the relay did not listen again"
            time.sleep(0.002)
        listening = time.monotonic()
        time.sleep(1.0)
        result = call.finish(now=True)
    rtp = result["rtp_times"]
    first, flowing = first_after(rtp, listening), flowing_at(rtp, listening)
    assert first is not None and flowing is not None, "echo did not resume"
    report(f"[lab test] relay-us-east kill -9 + restart: listening again {listening - killed:.2f}s"
           f" after the kill; na echo's first packet {(first - listening) * 1000:.0f} ms and "
           f"{FLOWING} packets {(flowing - listening) * 1000:.0f} ms after it listened")
    assert first - listening <= RELAY_RESUME_MAX


# a transceiver pod stopped: its preStop hook drains it ----------------------------------------


def readyz(lab: Lab, host: str) -> int:
    """The transceiver's readiness (its manifest's probe: /readyz on the admin port), from its
    host as the kubelet asks it."""
    address = next(h["addresses"][0] for h in lab.data["hosts"] if h["name"] == host)
    with inside(PREFIX + host):
        try:
            status, _, _ = http_request("GET", f"http://{address}:9101/readyz", b"", {})
        except OSError:
            return 0
    return status


def test_prestop_drains_a_transceiver_without_dropping_its_call(
    lab: Lab, report: Callable[[str], None]
) -> None:
    """The StatefulSet's preStop hook (`manage.py drain transceiver --wait`) on the eu call's
    transceiver: it turns unready at once, offers go to its twin, the call keeps its echo, and
    the hook returns when the call has ended and the transceiver has exited; the pod started
    again takes sessions (the finished drain does not stick)."""
    eu = client_of(lab, "eu")["netns"]
    region = next(r for r in build_plan().regions if r.code == "eu-west")
    with held_call(lab, "eu", 60.0) as call:
        xid = int(call.connected["transceiver"])
        host = f"tx-eu-west-{region.transceiver_ids().index(xid) + 1}"
        other = next(i for i in region.transceiver_ids() if i != xid)
        hook = operate.pre_stop(VAR, host)
        started = time.monotonic()
        while readyz(lab, host) != 503:  # the hook is a Python start-up: seconds under load
            assert time.monotonic() - started < 40.0, "still ready while draining"
            assert hook.poll() is None, hook.communicate()[0]
            time.sleep(0.1)
        unready = time.monotonic() - started
        chosen = offer_transceivers(lab, eu, 2)
        time.sleep(3.0)  # the call goes on on the draining transceiver
        assert hook.poll() is None and readyz(lab, host) == 503
        result = call.finish(now=True)
    ended = time.monotonic()
    out, _ = hook.communicate(timeout=60)
    hook_done = time.monotonic()
    report(f"[lab test] preStop on {host}: unready {unready:.2f}s after the hook started, "
           f"next offers to {chosen}, held call echo {result['echo_ratio']:.3f}; hook returned "
           f"{hook_done - ended:.2f}s after the call ended: {out.strip().splitlines()[-1:]}")
    try:
        assert hook.returncode == 0, out
        assert "drained and exited" in out
        # the hook returns once the node has left the fleet (its heartbeat is gone); the process
        # then finishes its interpreter shutdown, well inside the pod's termination grace
        while operate.running(VAR, host):
            assert time.monotonic() - hook_done < EXIT_GRACE, f"{host} still runs after its drain"
            time.sleep(0.05)
        assert chosen == [other] * len(chosen)
        assert result["echo_ratio"] >= MIN_ECHO
    finally:  # the next tests need both eu-west transceivers, whatever happened here
        if hook.poll() is None:
            hook.kill()
        operate.kill(VAR, host)
        operate.start(VAR, host)
        deadline = time.monotonic() + 40.0
        while (back := transceiver_row(lab, "eu-west", xid))["state"] != "healthy" \
                or not back["live"]:
            assert time.monotonic() < deadline, back
            time.sleep(0.5)


# a transceiver host dies --------------------------------------------------------------------


def transceiver_row(lab: Lab, region: str, xid: int) -> dict[str, Any]:
    body = http_json(client_of(lab, "eu")["netns"], lab.data["signaling_url"] + "/v1/regions")
    listed = next(r for r in body["regions"] if r["code"] == region)  # type: ignore[attr-defined]
    return dict(next(t for t in listed["transceivers"] if t["id"] == xid))


def offer_transceivers(lab: Lab, netns: str, count: int) -> list[int | None]:
    """X-Transceiver of ``count`` offers (each DELETEd) from ``netns``."""
    sdp, url = asyncio.run(offer_sdp()).encode(), lab.data["signaling_url"]
    chosen: list[int | None] = []
    for _ in range(count):
        with inside(netns):
            status, headers, body = http_request("POST", url + "/v1/sessions", sdp,
                                                 {"Content-Type": "application/sdp",
                                                  **bearer(lab.api_key)})
            assert status == 201, body[:300]
            http_request("DELETE", urljoin(url, headers["Location"]), b"", bearer(lab.api_key))
        chosen.append(int(headers["X-Transceiver"]))
    return chosen


def test_dead_transceiver_fails_its_sessions_and_offers_use_the_other(
    lab: Lab, report: Callable[[str], None]
) -> None:
    """kill the transceiver host carrying the eu call: the session fails within 3 probe
    intervals of the transceiver being seen down, and eu-west's offers go to its twin."""
    eu = client_of(lab, "eu")["netns"]
    region = next(r for r in build_plan().regions if r.code == "eu-west")
    with held_call(lab, "eu", 30.0) as call:
        xid = int(call.connected["transceiver"])
        number = region.transceiver_ids().index(xid) + 1
        host = f"tx-eu-west-{number}"
        other = next(i for i in region.transceiver_ids() if i != xid)
        session_url = call.connected["location"]
        killed, killed_wall = time.monotonic(), time.time()
        operate.kill(VAR, host)
        state: dict[str, Any] = {}
        while (state := http_json(eu, session_url, token=lab.api_key))["state"] != "failed":
            assert time.monotonic() - killed < 30.0, state
            time.sleep(0.1)
        row = transceiver_row(lab, "eu-west", xid)
        chosen = offer_transceivers(lab, eu, 3)
    down_at, failed_at = wall(row["state_changed_at"]), wall(state["ended_at"])
    report(f"[lab test] {host} killed: seen {row['state']} {down_at - killed_wall:.2f}s later "
           f"({row['state_reason']}); its session failed {failed_at - down_at:.2f}s after that "
           f"({state['reason']}); next eu-west offers went to transceivers {chosen}")
    operate.start(VAR, host)
    deadline = time.monotonic() + 40.0
    while (back := transceiver_row(lab, "eu-west", xid))["state"] != "healthy" or not back["live"]:
        assert time.monotonic() < deadline, back
        time.sleep(0.5)
    report(f"[lab test] {host} restarted: healthy again {time.monotonic() - killed:.1f}s "
           "after the kill")
    assert row["state"] == "down", row
    assert failed_at - down_at <= 3 * PROBE_INTERVAL
    assert chosen == [other] * len(chosen)


# a signaling host dies ----------------------------------------------------------------------


def test_dead_signaling_host_costs_only_requests_in_flight(
    lab: Lab, report: Callable[[str], None]
) -> None:
    """Every continent loops offers through the LB while sig-1 is SIGKILLed: only requests
    sig-1 held at that instant may fail; every later one is answered by sig-2."""
    loops = [lab.start_client(c["netns"], "--offer-loop", "12", "--gap", "0.55")
             for c in lab.clients()]
    try:
        for proc in loops:
            assert proc.stdout is not None and proc.stdout.readline(), "no offer loop"
        time.sleep(3.0)
        killed = time.monotonic()
        operate.kill(VAR, "sig-1")
        outputs = [proc.communicate(timeout=60) for proc in loops]
    finally:
        for proc in loops:
            if proc.poll() is None:
                proc.kill()
    requests = [r for out, _ in outputs for r in json.loads(out.strip().splitlines()[-1])
                ["requests"]]
    failed = [r for r in requests if r[3] != (201 if r[0] == "POST" else 200)]
    in_flight = [r for r in requests if r[1] <= killed <= r[2]]
    later = [r for r in requests if r[1] > killed]
    slowest = max((r[2] - r[1] for r in later), default=0.0)
    report(f"[lab test] sig-1 SIGKILLed during {len(requests)} requests from 3 continents: "
           f"{len(in_flight)} in flight, {len(failed)} failed {[(r[0], r[3]) for r in failed]};"
           f" {len(later)} after the kill all answered by sig-2 (slowest "
           f"{slowest * 1000:.0f} ms)")
    operate.start(VAR, "sig-1")
    lb = PREFIX + "lb"
    sig1 = f"http://{private_address(build_plan(), 'sig-1')}:8000/healthz"
    deadline = time.monotonic() + 40.0
    while True:
        try:
            if http_json(lb, sig1).get("status") == "ok":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "sig-1 did not come back"
        time.sleep(0.3)
    assert all(r in in_flight for r in failed), failed
    assert len(failed) <= MAX_IN_FLIGHT_ERRORS
    assert len(later) >= 10 and all(r not in failed for r in later)


