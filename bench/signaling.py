"""Signaling: offer -> answer latency and sustained offers/s through ``POST /v1/sessions``,
beside the transceiver's answer path called directly (``SessionManager.open`` on an ``IceMux``
in this process: no HTTP, Django, DB, Channels layer or Redis), with the same real aiortc offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urljoin

from aiortc import RTCConfiguration, RTCPeerConnection

from bench.common import Row, median, percentile
from fleet.sockets import bind_udp
from relays.ufrag import mint_password, mint_ufrag
from transceivers.control import SessionEvent
from whip.client import ToneTrack, http_request
from whip.launch import free_port

T = TypeVar("T")
TARGET_ADDED_MS = 10.0
TARGET_ADDED_P99_MS = 20.0
CONCURRENCY = 8
KEY = b"bench-signaling"


async def make_offers(count: int) -> list[str]:
    """``count`` real offers from aiortc (audio, host candidates), as a WHIP client sends."""
    offers = []
    for _ in range(count):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(ToneTrack(1.0))
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    return offers


# the signaling path ------------------------------------------------------------------------

def _post(base_url: str, offer: str) -> tuple[float, str]:
    started = time.perf_counter()
    status, headers, body = http_request("POST", urljoin(base_url, "/v1/sessions"),
                                         offer.encode(), {"Content-Type": "application/sdp"})
    elapsed = (time.perf_counter() - started) * 1000
    if status != 201:
        raise RuntimeError(f"POST /v1/sessions: {status} {body[:300]!r}")
    return elapsed, urljoin(base_url, headers["Location"])


def _delete_all(locations: list[str]) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda url: http_request("DELETE", url, b"", {}), locations))


def signaling_latency(base_url: str, offers: list[str], count: int) -> list[float]:
    """Sequential POSTs (one at a time); each session is deleted before the next offer."""
    times = []
    for offer in itertools.islice(itertools.cycle(offers), count):
        elapsed, location = _post(base_url, offer)
        times.append(elapsed)
        http_request("DELETE", location, b"", {})
    return times


def signaling_rate(base_urls: list[str], offers: list[str], seconds: float) -> float:
    """Answers/s with ``CONCURRENCY`` clients posting back to back for ``seconds``, spread
    evenly over the signaling replicas at ``base_urls``."""
    locations: list[str] = []
    deadline = time.perf_counter() + seconds
    feed = itertools.cycle(offers)

    def worker(index: int) -> int:
        done, base_url = 0, base_urls[index % len(base_urls)]
        while time.perf_counter() < deadline:
            locations.append(_post(base_url, next(feed))[1])
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        total = sum(pool.map(worker, range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    _delete_all(locations)
    return total / elapsed


# the direct answer path --------------------------------------------------------------------

class _Quiet:
    """Reporter and event sink that drop everything (the direct path has no DB or layer)."""

    async def answered(self, *, session_id: str, incarnation: str) -> None:
        return None

    async def connected(self, *, session_id: str) -> None:
        return None

    async def ended(self, *, session_id: str, state: str, reason: str) -> None:
        return None

    async def publish(self, event: SessionEvent) -> None:
        return None


def _manager(mux: Any, *, events: object = None, shared_certificate: bool = True) -> Any:
    """A ``SessionManager`` as the transceiver daemon composes one (its default certificate
    keeping), reporting and publishing nothing unless ``events`` is given."""
    from transceivers.agents import EchoAgent
    from transceivers.dtls import CertificateKeeper
    from transceivers.sessions import SessionManager

    quiet = _Quiet()
    return SessionManager(mux=mux, agent_factory=EchoAgent, reporter=quiet,
                          events=events or quiet,  # type: ignore[arg-type]
                          connect_timeout=60.0, capacity=100_000,
                          certificates=CertificateKeeper() if shared_certificate else None)


def _direct_mux() -> Any:
    from transceivers import aiortc_hook
    from transceivers.shared_socket import SOCKET_BUFFER, IceMux

    aiortc_hook.install()
    mux = IceMux(bind_udp(("127.0.0.1", 0), buffer=SOCKET_BUFFER))
    mux.start()
    return mux


SETTLE = 0.03  # s after a close: aioice gives up the unconnected ICE in ~20 ms, and aiortc
# still starts DTLS (building the OpenSSL context) once it has


async def paired_certificate(offers: list[str], count: int
                             ) -> dict[str, list[tuple[float, float]]]:
    """Per session, (ms from the offer to the answer, ms of this thread's CPU for the session's
    whole life: answer, close and what aiortc runs after it, DTLS start included), one manager
    making a certificate per session (aiortc's way), one sharing the process's
    (``TRANSCEIVER_SHARED_CERTIFICATE``), offers alternating between them (the order swapped
    every round): {"own": [...], "shared": [...]}, round by round."""
    mux = _direct_mux()
    managers = {"own": _manager(mux, shared_certificate=False), "shared": _manager(mux)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in managers}
    try:
        for i, offer in enumerate(itertools.islice(itertools.cycle(offers), count + 10)):
            for name in (("own", "shared") if i % 2 == 0 else ("shared", "own")):
                session_id = str(uuid.uuid4())
                ufrag = mint_ufrag(shard=1, transceiver=1, key_id=1, key=KEY,
                                   nonce=os.urandom(4))
                cpu, started = time.thread_time(), time.perf_counter()
                await managers[name].open(session_id=session_id, offer_sdp=offer, ufrag=ufrag,
                                          pwd=mint_password(os.urandom(18)),
                                          relay_public=("127.0.0.1", 9))
                answered = (time.perf_counter() - started) * 1000
                await managers[name].close(session_id)
                await asyncio.sleep(SETTLE)
                if i >= 10:  # the first rounds warm up
                    times[name].append((answered, (time.thread_time() - cpu) * 1000))
    finally:
        mux.close()
    return times


async def _direct(offers: list[str], count: int, seconds: float, *, events: object = None
                  ) -> tuple[list[float], float]:
    mux = _direct_mux()
    manager = _manager(mux, events=events)
    n = itertools.count()

    async def answer(offer: str) -> tuple[float, str]:
        session_id = str(uuid.uuid4())
        ufrag = mint_ufrag(shard=1, transceiver=1, key_id=1, key=KEY, nonce=os.urandom(4))
        started = time.perf_counter()
        await manager.open(session_id=session_id, offer_sdp=offer, ufrag=ufrag,
                           pwd=mint_password(os.urandom(18)), relay_public=("127.0.0.1", 9))
        elapsed = (time.perf_counter() - started) * 1000
        manager.announce_answered(session_id)  # as the control server does after its reply
        next(n)
        return elapsed, session_id

    try:
        times = []
        for offer in itertools.islice(itertools.cycle(offers), count):
            elapsed, session_id = await answer(offer)
            times.append(elapsed)
            await manager.close(session_id)
        if not seconds:
            return times, 0.0
        feed = itertools.cycle(offers)
        deadline = time.perf_counter() + seconds
        opened: list[str] = []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                opened.append((await answer(next(feed)))[1])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        rate = len(opened) / (time.perf_counter() - started)
        await manager.close_all(reason="bench done")
        return times, rate
    finally:
        mux.close()


async def _edge_latency(base_url: str, offers: list[str], count: int
                        ) -> tuple[list[float], list[float]]:
    """Interleaved: a WHIP POST, then signaling's last leg alone (``request_answer`` over the
    Channels layer to the edge's transceiver: no HTTP, Django view, DB or placement)."""
    from transceivers.control import request_answer, request_close

    posts, times = [], []
    for offer in itertools.islice(itertools.cycle(offers), count):
        elapsed, location = await asyncio.to_thread(_post, base_url, offer)
        posts.append(elapsed)
        await asyncio.to_thread(http_request, "DELETE", location, b"", {})
        session_id = str(uuid.uuid4())
        ufrag = mint_ufrag(shard=1, transceiver=1, key_id=1, key=KEY, nonce=os.urandom(4))
        started = time.perf_counter()
        await request_answer(transceiver_id=1, session_id=session_id, offer_sdp=offer,
                             ufrag=ufrag, pwd=mint_password(os.urandom(18)),
                             relay_public=("127.0.0.1", 9), timeout=10.0)
        times.append((time.perf_counter() - started) * 1000)
        await request_close(transceiver_id=1, session_id=session_id)
    return posts, times


@contextlib.contextmanager
def replica(edge_env: dict[str, str]) -> Iterator[str]:
    """One more signaling process (daphne, as ``up`` runs it) on the edge's DB and Redis."""
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling_site.http_server", "-b", "127.0.0.1", "-p", str(port),
         "signaling_site.asgi:application"],
        # as `up` runs its own signaling: the API open unless the operator set AUTH_REQUIRED
        env={"AUTH_REQUIRED": "0", **edge_env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if http_request("GET", f"{url}/healthz", b"", {}, timeout=2)[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the extra signaling replica did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def paired_middleware(edge_env: dict[str, str], offers: list[str], count: int
                      ) -> dict[str, list[float]]:
    """Offer -> answer ms through two extra signaling processes on the edge, one on Django's
    stock middleware (``INLINE_MIDDLEWARE=0``), one on ``signaling_site.middleware``,
    sequential offers alternating between them (the order swapped every round) so drifting
    machine load falls on both alike: {"stock": [...], "inline": [...]}, round by round."""
    with replica({**edge_env, "INLINE_MIDDLEWARE": "0"}) as stock, \
            replica({**edge_env, "INLINE_MIDDLEWARE": "1"}) as inline:
        urls = {"stock": stock, "inline": inline}
        for url in urls.values():
            signaling_latency(url, offers, 5)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in urls}
        for i in range(count):
            for name in (("stock", "inline") if i % 2 == 0 else ("inline", "stock")):
                times[name] += signaling_latency(urls[name], offers[i % len(offers):], 1)
    return times


def paired_row(name: str, values: list[float], baseline: list[float], note: str) -> Row:
    """An A/B row in ms: the p50 of ``values`` beside the p50 of ``baseline`` (measured round by
    round, alternating), the note ending with the median of the per-round differences."""
    p50, base50 = percentile(values, 50), percentile(baseline, 50)
    paired = median([a - b for a, b in zip(values, baseline, strict=True)])
    return Row(name, p50, "ms", baseline=base50, ratio=p50 / base50,
               note=f"{note}; paired (median of per-round differences): {paired:+.2f} ms")


def _django(edge_env: dict[str, str]) -> None:
    """Point this process's Django at the edge's Redis and DB (settings read the env once)."""
    os.environ.update({k: v for k, v in edge_env.items()
                       if k in ("REDIS_URL", "EDGE_VAR_DIR", "DATABASE_URL")},
                      LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "signaling_site.settings")
    import django

    django.setup()


def view_steps(count: int) -> dict[str, float]:
    """p50 ms of each synchronous step ``POST /v1/sessions`` runs (all in one ``sync_to_async``
    hop), called directly against the edge's DB and Redis. Marking the session answered is the
    transceiver's reporter's job, off the offer's path."""
    from calls import services
    from calls.ratelimit import admit_offer, client_key
    from calls.services import placement_choose
    from calls.steering import rank_regions_for

    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., T], **kwargs: Any) -> T:
        started = time.perf_counter()
        result = fn(**kwargs)
        times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return result

    # the sustained-rate steps before this leave the transceiver closing ~2,000 sessions: its
    # heartbeat may be stale for a few seconds, and placement finds no transceiver until then
    deadline = time.monotonic() + 60
    while placement_choose(ranked=rank_regions_for(client_ip="127.0.0.1", pinned=None)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no transceiver could take a session for 60 s")
        time.sleep(0.5)
    for _ in range(count):
        timed("rate_limit", admit_offer, key=client_key("192.0.2.250"), window=12.0)
        ranked = timed("rank", rank_regions_for, client_ip="127.0.0.1", pinned=None)
        placement = timed("placement", placement_choose, ranked=ranked, exclude=[])
        assert placement is not None
        created = timed("create", services.session_create_within_capacity,
                        placement=placement, client_ip="127.0.0.1", client_key="127.0.0.1")
        assert created is not None
        session, _ = created
        services.session_end(session_id=str(session.id), state="ended", reason="bench")
    return {name: percentile(values, 50) for name, values in times.items()}


def run(quick: bool) -> list[Row]:
    from bench.edge import edge

    count, seconds = (30, 3.0) if quick else (200, 10.0)
    offers = asyncio.run(make_offers(8))
    running = edge()
    base_url = running.base_url
    _django(running.env)
    database = "PostgreSQL" if running.env.get("DATABASE_URL", "").startswith("postgres") \
        else "SQLite"
    signaling_latency(base_url, offers, 5)  # warm-up
    times, control = asyncio.run(_edge_latency(base_url, offers, count))
    direct_times, direct_rate = asyncio.run(_direct(offers, count, seconds))
    from transceivers.reporting import ChannelEventSink

    published, _ = asyncio.run(_direct(offers, count, 0.0, events=ChannelEventSink()))
    pairs = paired_middleware(running.env, offers, count)  # before the rate steps' aftermath
    certs = asyncio.run(paired_certificate(offers, count // 2))
    rate = signaling_rate([base_url], offers, seconds)
    with replica(running.env) as second:
        signaling_latency(second, offers, 5)  # warm-up
        rate2 = signaling_rate([base_url, second], offers, seconds)
    steps = view_steps(count // 2)
    p50, p99 = percentile(times, 50), percentile(times, 99)
    d50, d99 = percentile(direct_times, 50), percentile(direct_times, 99)
    cert_answer = {name: [a for a, _ in runs] for name, runs in certs.items()}
    cert_cpu = {name: [c for _, c in runs] for name, runs in certs.items()}
    return [
        Row("signaling: offer -> answer p50", p50, "ms", baseline=d50, ratio=p50 / d50,
            note=f"POST /v1/sessions on {database}, real aiortc offers, n={count}; baseline: "
                 "SessionManager.open in-process"),
        Row("signaling: offer -> answer p99", p99, "ms", baseline=d99, ratio=p99 / d99),
        Row("signaling: added over direct p50", p50 - d50, "ms",
            target=f"<= {TARGET_ADDED_MS:g} ms", met=p50 - d50 <= TARGET_ADDED_MS,
            note="HTTP + Django + DB + placement + control round trip to the transceiver"),
        Row("signaling: added over direct p99", p99 - d99, "ms",
            target=f"<= {TARGET_ADDED_P99_MS:g} ms", met=p99 - d99 <= TARGET_ADDED_P99_MS,
            note="p99 of the edge less p99 of the direct path, same run"),
        paired_row("signaling A/B: offer -> answer p50, inline middleware", pairs["inline"],
                   pairs["stock"], f"two extra signaling processes, {count} alternating offers "
                   "each; baseline: Django's stock middleware (INLINE_MIDDLEWARE=0)"),
        paired_row("signaling A/B: transceiver answer p50, shared certificate",
                   cert_answer["shared"], cert_answer["own"],
                   f"in-process, {count // 2} alternating offers each; baseline: a certificate "
                   "per session (TRANSCEIVER_SHARED_CERTIFICATE=0)"),
        paired_row("signaling A/B: transceiver CPU per session, shared certificate",
                   cert_cpu["shared"], cert_cpu["own"],
                   "the same sessions: CPU of the answer, the close and what aiortc runs after "
                   "it (its DTLS start builds an OpenSSL context)"),
        Row("signaling: view's sync steps p50 (sum)", sum(steps.values()), "ms",
            note=", ".join(f"{k} {v:.1f}" for k, v in steps.items())
            + " ms; one thread hop; measured after the sustained-rate steps"),
        Row("signaling: control leg alone p50", percentile(control, 50), "ms", baseline=d50,
            ratio=percentile(control, 50) / d50,
            note="request_answer over the Redis-list control queue (no HTTP/DB)"),
        Row("signaling: direct + ChannelEventSink p50", percentile(published, 50), "ms",
            baseline=d50, ratio=percentile(published, 50) / d50,
            note="open() with the real event sink (ANSWERED is queued after the answer)"),
        Row("signaling: sustained answers/s", rate, "1/s", baseline=direct_rate,
            ratio=rate / direct_rate, note=f"{CONCURRENCY} concurrent clients, {seconds:g} s"),
        Row("signaling: sustained answers/s, 2 replicas", rate2, "1/s", baseline=rate,
            ratio=rate2 / rate, note="the same clients spread over two daphne processes on one "
            "DB, Redis and transceiver (2 cores: the transceiver, Redis and the DB share them)"),
    ]
