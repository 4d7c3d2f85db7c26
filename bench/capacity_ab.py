"""Transceiver CPU per echoed frame, variant against variant in the same run.

Every variant is its own edge (``manage.py up`` with the variant's environment), all up at
once; echo sessions (the capacity benchmark's clients, in this process, speaking
``bench.capacity.SPEECH``) go to one edge at a time, rounds interleaved A B B A ... so drifting
machine load falls on each variant alike. The figure is the transceiver process's CPU time over
the window divided by the echoed frames the clients received in it (so a variant is not
flattered by frames it lost), and the % of a core one session costs at 50 frames/s. Not pinned.

Variants (``VARIANTS``; ``BENCH_AB`` sets others): the received-media hop of aiortc
(``TRANSCEIVER_LEAN_RTP=0``) against the lean path (``transceivers.lean_rtp``, the default).
In this process: voice Opus encode microseconds per 20 ms frame, libopus directly against
PyAV's ``CodecContext``, and speech against a tone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable

from aiortc import rtp
from aiortc.codecs.base import Encoder

from bench.capacity import (
    FRAME_S,
    MAX_LOSS,
    Step,
    _transceiver,
    speech_frames,
    step,
    tone_frames,
)
from bench.common import Row, write
from transceivers import libopus, speedups

# {name: the edge's environment}, the first the baseline; BENCH_AB (the same as JSON) asks
# another question, e.g. '{"c10": {}, "c5-wb": {"TRANSCEIVER_OPUS_COMPLEXITY": "5",
# "TRANSCEIVER_OPUS_BANDWIDTH": "wideband"}}'
VARIANTS: dict[str, dict[str, str]] = json.loads(os.environ.get("BENCH_AB", "null")) or {
    "stock": {"TRANSCEIVER_LEAN_RTP": "0"}, "lean": {"TRANSCEIVER_LEAN_RTP": "1"}}
BASELINE = next(iter(VARIANTS))


def codec_costs(frames: int = 500, rounds: int = 15) -> dict[str, float]:
    """{"pyav"|"direct": encode us per tone frame, "speech": direct encode us per frame of
    ``SPEECH``}: this thread's CPU time, the least of interleaved rounds (the round other work
    on the machine disturbed least). No "speech" without espeak-ng."""
    lib = libopus.load()
    if lib is None:
        raise RuntimeError("no libopus to compare with")
    inputs = {"pyav": tone_frames(frames), "direct": tone_frames(frames)}
    if shutil.which("espeak-ng"):
        inputs["speech"] = (speech_frames() * (frames // 400 + 1))[:frames]
    makers: dict[str, Callable[[], Encoder]] = {
        "pyav": speedups.VoiceOpusEncoder, "direct": lambda: speedups.DirectOpusEncoder(lib),
        "speech": lambda: speedups.DirectOpusEncoder(lib)}
    costs: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(rounds):
        for name, audio in inputs.items():
            encoder = makers[name]()
            started = time.thread_time()
            for frame in audio:
                encoder.encode(frame)
            costs[name].append((time.thread_time() - started) / len(audio) * 1e6)
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
        results = asyncio.run(rounds(3 if quick else 20, 2.0 if quick else 10.0,
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
            baseline=None if name == BASELINE else median[BASELINE],
            ratio=None if name == BASELINE else median[name] / median[BASELINE],
            note=f"median of rounds {rounds_text} (worst client loss if >= 1 %): {core:.2f} % "
                 f"core/session (~{100 / core:.0f} sessions/core); {steps[0].sessions} sessions"))
    rows.append(Row(
        "capacity A/B: voice Opus encode per 20 ms frame, direct", costs["direct"], "us",
        baseline=costs["pyav"], ratio=costs["direct"] / costs["pyav"],
        note="same process, thread CPU time, least of 15 interleaved rounds of 500 frames; "
             "baseline: PyAV CodecContext"))
    if "speech" in costs:
        rows.append(Row(
            "capacity A/B: voice Opus encode per 20 ms frame of speech", costs["speech"], "us",
            baseline=costs["direct"], ratio=costs["speech"] / costs["direct"],
            note="libopus directly, espeak-ng speech (what the clients send); baseline: the "
                 "440 Hz tone; libopus codes speech in its costlier speech modes"))
    return rows
