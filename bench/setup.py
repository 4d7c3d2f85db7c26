"""Set-up: offer -> ICE connected -> DTLS connected -> first echoed tone frame.

Through the edge (``manage.py up``: signaling, relay, transceiver with its echo agent) versus a
direct aiortc-to-aiortc call to an echo peer in a subprocess (no signaling, no relay), in the
same run. The direct echo peer runs three times: stock aiortc (its audio buffer holds 4
frames), aiortc's buffer holding none (``prefetch=0``: each frame released when the next packet
arrives, what the transceiver had until 2026-12-01) and ``transceivers.jitter``'s release
buffer (each frame at once), to show what the buffer costs the first echo. The client is
``whip.client``'s tone track; all times are from the moment the offer is ready.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from bench.common import Row, median
from whip.client import ToneTrack, http_request, is_tone

CTX = mp.get_context("fork")
TARGET_VS_DIRECT_MS = 2.0
STOCK_FIRST_ECHO_MS = 190.0


@dataclass
class Timing:
    answer_ms: float  # offer ready -> answer in hand (signaling, or the pipe to the peer)
    ice_ms: float  # answer applied -> ICE connected
    dtls_ms: float  # answer applied -> DTLS connected (connectionState "connected")
    echo_ms: float  # offer ready -> first echoed tone frame


FIELDS = ("answer_ms", "ice_ms", "dtls_ms", "echo_ms")
Answerer = Callable[[str], Awaitable[str]]


async def probe(answer: Answerer, *, timeout: float = 10.0) -> Timing:
    """One call: offer, get the answer from ``answer``, time the milestones."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    marks: dict[str, float] = {}
    pc.addTrack(ToneTrack(2.0))
    echoed = asyncio.get_running_loop().create_future()

    def on_ice() -> None:
        if pc.iceConnectionState in ("connected", "completed"):
            marks.setdefault("ice", time.monotonic())

    def on_state() -> None:
        if pc.connectionState == "connected":
            marks.setdefault("dtls", time.monotonic())

    async def read(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, AudioFrame) and is_tone(frame) and not echoed.done():
                echoed.set_result(time.monotonic())

    pc.on("iceconnectionstatechange", on_ice)
    pc.on("connectionstatechange", on_state)
    pc.on("track", lambda track: asyncio.ensure_future(read(track)))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        start = time.monotonic()
        sdp = await answer(pc.localDescription.sdp)
        answered = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        first = await asyncio.wait_for(echoed, timeout)
        ms = {k: (v - answered) * 1000 for k, v in marks.items()}
        return Timing((answered - start) * 1000, ms.get("ice", float("nan")),
                      ms.get("dtls", float("nan")), (first - start) * 1000)
    finally:
        await pc.close()


def edge_answerer(base_url: str, locations: list[str]) -> Answerer:
    async def answer(offer: str) -> str:
        status, headers, body = await asyncio.to_thread(
            http_request, "POST", urljoin(base_url, "/v1/sessions"), offer.encode(),
            {"Content-Type": "application/sdp"})
        if status != 201:
            raise RuntimeError(f"POST /v1/sessions: {status} {body[:200]!r}")
        locations.append(urljoin(base_url, headers["Location"]))
        return body.decode()
    return answer


def _echo_peer(conn: Any, prefetch: int | None | str) -> None:
    """Subprocess: answer each offer from ``conn`` with an aiortc peer that echoes the audio."""
    from transceivers.agents import EchoAgent
    from transceivers.jitter import tune_audio_receiver

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pcs = []
        while True:
            offer = await loop.run_in_executor(None, conn.recv)
            if offer is None:
                break
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc)
            agent = EchoAgent("direct")

            def on_track(track: MediaStreamTrack, pc: RTCPeerConnection = pc,
                         agent: EchoAgent = agent) -> None:
                if prefetch != "stock":  # None: the release buffer; a number: aiortc's
                    tune_audio_receiver(pc, track, prefetch=prefetch)  # type: ignore[arg-type]
                pc.addTrack(agent.attach(track))

            pc.on("track", on_track)
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            conn.send(pc.localDescription.sdp)
        for pc in pcs:
            await pc.close()

    asyncio.run(main())


class DirectPeer:
    """An aiortc echo peer in its own process (so it does not share the client's event loop)."""

    def __init__(self, *, prefetch: int | None | str) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_echo_peer, args=(child, prefetch), daemon=True)
        self.proc.start()

    async def answer(self, offer: str) -> str:
        self.conn.send(offer)
        return str(await asyncio.to_thread(self.conn.recv))

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


async def _measure(trials: int) -> dict[str, list[Timing]]:
    from bench.edge import edge

    running = edge()
    peers = {"direct stock": DirectPeer(prefetch="stock"),
             "direct prefetch 0": DirectPeer(prefetch=0),
             "direct tuned": DirectPeer(prefetch=None)}
    results: dict[str, list[Timing]] = {"edge": [], **{k: [] for k in peers}}
    locations: list[str] = []
    try:
        await probe(edge_answerer(running.base_url, locations))  # warm-up (imports, caches)
        for _ in range(trials):  # interleaved so machine noise hits every path alike
            results["edge"].append(await probe(edge_answerer(running.base_url, locations)))
            for name, peer in peers.items():
                results[name].append(await probe(peer.answer))
    finally:
        for peer in peers.values():
            peer.close()
        for url in locations:
            await asyncio.to_thread(http_request, "DELETE", url, b"", {})
    return results


def run(quick: bool) -> list[Row]:
    results = asyncio.run(_measure(3 if quick else 15))
    med = {name: Timing(*(median([getattr(t, f) for t in ts]) for f in FIELDS))
           for name, ts in results.items()}
    edge, direct, stock = med["edge"], med["direct tuned"], med["direct stock"]
    n = len(results["edge"])
    rows = []
    for label, field in (("ICE connected", "ice_ms"), ("DTLS connected", "dtls_ms")):
        value, base = getattr(edge, field), getattr(direct, field)
        rows.append(Row(f"setup: answer -> {label} p50", value, "ms", baseline=base,
                        ratio=value / base, target=f"<= direct + {TARGET_VS_DIRECT_MS:g} ms",
                        met=value - base <= TARGET_VS_DIRECT_MS,
                        note=f"via relay+transceiver vs direct aiortc peer; n={n}; "
                             f"diff {value - base:+.1f} ms"))
    rows.append(Row("setup: offer -> answer p50 (WHIP POST)", edge.answer_ms, "ms",
                    baseline=direct.answer_ms, ratio=edge.answer_ms / direct.answer_ms,
                    note="baseline: direct peer answering over a pipe"))
    rows.append(Row("setup: offer -> first echo p50 (edge)", edge.echo_ms, "ms",
                    baseline=direct.echo_ms, ratio=edge.echo_ms / direct.echo_ms,
                    target=f"< {STOCK_FIRST_ECHO_MS:g} ms (stock aiortc)",
                    met=edge.echo_ms < STOCK_FIRST_ECHO_MS,
                    note=f"baseline: direct echo peer with tuned jitter buffer; n={n}"))
    rows.append(Row("setup: first echo, direct tuned vs stock", direct.echo_ms, "ms",
                    baseline=stock.echo_ms, ratio=direct.echo_ms / stock.echo_ms,
                    note="echo peer receiver: transceivers/jitter.py's release buffer vs "
                         "aiortc's (prefetch 4)"))
    held = med["direct prefetch 0"]
    rows.append(Row("setup: first echo, release buffer vs aiortc prefetch 0", direct.echo_ms,
                    "ms", baseline=held.echo_ms, ratio=direct.echo_ms / held.echo_ms,
                    note=f"diff {direct.echo_ms - held.echo_ms:+.1f} ms: aiortc's buffer "
                         "releases a frame only when the next packet arrives"))
    return rows
