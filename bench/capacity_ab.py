"""Transceiver CPU per echoed frame, variant against variant in the same run.

Every variant is its own edge (``manage.py up`` with the variant's environment), all up at
once; echo sessions (the capacity benchmark's clients, in this process) go to one edge at a
time, rounds interleaved A B B A ... so drifting machine load falls on each variant alike. The
figure is the transceiver process's CPU time over the window divided by the echoed frames the
clients received in it (so a variant is not flattered by frames it lost), and the % of a core
one session costs at 50 frames/s. Not pinned (as the README's transceiver figures).

Variants: the voice codec on libopus directly (``TRANSCEIVER_DIRECT_OPUS``, the default) and on
PyAV's ``CodecContext`` (``TRANSCEIVER_DIRECT_OPUS=0``); and, in this process, encode
microseconds per 20 ms frame of both encoders.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

from aiortc import rtp
from aiortc.codecs.base import Encoder

from bench.capacity import FRAME_S, MAX_LOSS, Step, _transceiver, step, tone_frames
from bench.common import Row, write
from transceivers import libopus, speedups

VARIANTS = {"pyav": {"TRANSCEIVER_DIRECT_OPUS": "0"}, "direct": {"TRANSCEIVER_DIRECT_OPUS": "1"}}


def codec_costs(frames: int = 500, rounds: int = 15) -> dict[str, float]:
    """{"pyav"|"direct": encode us/frame}: this thread's CPU time, the least of interleaved
    rounds (the round other work on the machine disturbed least)."""
    lib = libopus.load()
    if lib is None:
        raise RuntimeError("no libopus to compare with")
    tones = tone_frames(frames)
    makers: dict[str, Callable[[], Encoder]] = {
        "pyav": speedups.VoiceOpusEncoder, "direct": lambda: speedups.DirectOpusEncoder(lib)}
    costs: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            encoder = make()
            started = time.thread_time()
            for frame in tones:
                encoder.encode(frame)
            costs[name].append((time.thread_time() - started) / frames * 1e6)
    return {name: min(values) for name, values in costs.items()}


def us_per_frame(result: Step) -> float:
    return result.transceiver_cpu * result.window / max(result.echoed, 1) * 1e6


async def rounds(sessions: int, window: float, count: int) -> dict[str, list[Step]]:
    from bench.edge import other_edge

    edges = {name: other_edge(f"ab-{name}", env) for name, env in VARIANTS.items()}
    xcvrs = {name: _transceiver(edge.children()) for name, edge in edges.items()}
    rtp.compute_audio_level_dbov = speedups.audio_level_dbov  # spare the clients, as capacity
    names = list(VARIANTS)
    results: dict[str, list[Step]] = {name: [] for name in names}
    for i in range(count):
        for name in names if i % 2 == 0 else names[::-1]:
            for attempt in range(3):  # a loaded machine can leave the fleet view stale
                try:
                    result = await step(edges[name].base_url, sessions, window, xcvrs[name])
                    break
                except RuntimeError as exc:
                    write(f"#   {name}: attempt {attempt + 1} failed: {exc}"[:200])
                    await asyncio.sleep(5.0)
            else:
                write(f"#   {name}: round skipped (no step in 3 attempts)")
                continue
            results[name].append(result)
            write(f"#   {name}: {sessions} sessions, {us_per_frame(result):.0f} us/frame, "
                  f"loss {result.loss:.2%}, p99 {result.jitter_p99_ms:.1f} ms, "
                  f"xcvr {result.transceiver_cpu:.0%}")
            await asyncio.sleep(1.0)
    return results


def run(quick: bool) -> list[Row]:
    stock_level = rtp.compute_audio_level_dbov
    costs = codec_costs(100 if quick else 500)
    try:
        results = asyncio.run(rounds(3 if quick else 10, 2.0 if quick else 10.0,
                                     2 if quick else 8))
    finally:
        rtp.compute_audio_level_dbov = stock_level
    if not all(results.values()):
        raise RuntimeError(f"a variant has no measured round: {results}")
    # the median over every window: a window the clients lost frames in (a machine busy with
    # other work) counts frames the transceiver did send as not echoed; each window's worst
    # client loss is listed
    median = {name: statistics.median(us_per_frame(s) for s in steps)
              for name, steps in results.items()}
    rows = []
    for name, steps in results.items():
        core = median[name] / FRAME_S / 1e4  # % of a core for one session's 50 frames/s
        rounds_text = ", ".join(f"{us_per_frame(s):.0f}" + ("" if s.loss < MAX_LOSS else
                                f" ({s.loss:.0%})") for s in steps)
        rows.append(Row(
            f"capacity A/B: {name} transceiver CPU per echoed frame", median[name], "us",
            baseline=None if name == "pyav" else median["pyav"],
            ratio=None if name == "pyav" else median[name] / median["pyav"],
            note=f"median of rounds {rounds_text} (worst client loss if >= 1 %): {core:.2f} % "
                 f"core/session (~{100 / core:.0f} sessions/core); {steps[0].sessions} sessions"))
    rows.append(Row(
        "capacity A/B: voice Opus encode per 20 ms frame, direct", costs["direct"], "us",
        baseline=costs["pyav"], ratio=costs["direct"] / costs["pyav"],
        note="same process, thread CPU time, least of 15 interleaved rounds of 500 frames; "
             "baseline: PyAV CodecContext"))
    return rows
