"""Smoke test of the benchmark plumbing with tiny sizes: rows are well-formed. Never timed."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from bench import flows
from bench.capacity import FRAME_S, _decoded_tone, audio_level_cost, stalls
from bench.common import Row, format_table, percentile
from bench.forwarders import coturn
from bench.relay import KEYRING, SHARD, TRANSCEIVER_ID, binding_request
from relays.stun import is_binding_request, parse_server_ufrag
from relays.ufrag import validate_ufrag
from transceivers.speedups import audio_level_dbov


def _well_formed(rows: list[Row]) -> None:
    assert rows
    for row in rows:
        assert row.name and row.unit
        assert math.isfinite(row.value)
        if row.target:
            assert row.met in (True, False)
        if row.baseline is not None and row.ratio is not None:
            assert math.isclose(row.ratio, row.value / row.baseline, rel_tol=1e-9)


def test_flows_rows_are_well_formed() -> None:
    rows = flows.measure((200, 400), probes=500, rounds=1)
    _well_formed(rows)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1  # header, rule, one line per row
    assert "flows: memory per flow @200" in table


@pytest.mark.skipif(not flows.can_forge(), reason="needs root (raw socket) and the C fast path")
def test_flows_fast_path_rows_forward_forged_datagrams() -> None:
    """The C rows are fed from as many loopback clients as flows, and the fast path forwards
    them (``fast_forward_ns`` raises when it forwarded fewer than half)."""
    assert len(set(flows.clients(300, network=127))) == 300
    measured = flows.measure((200, 400), probes=500, rounds=1, packets=2000)
    _well_formed(measured)
    rows = {row.name: row for row in measured}
    small, large = (rows[f"flows: relay fast path forward @{n}"] for n in (200, 400))
    assert 0 < small.value < 1e6 and 0 < large.value < 1e6
    assert large.target and large.met is not None
    assert not rows["flows: forward (get+sendmsg) @400"].target  # the targets moved to C
    assert not rows["flows: lookup+header @400"].target


def test_relay_learning_request_carries_a_valid_ufrag() -> None:
    data = binding_request(40000)
    assert is_binding_request(data)
    claims = validate_ufrag(parse_server_ufrag(data), keys=KEYRING)
    assert (claims.shard, claims.transceiver) == (SHARD, TRANSCEIVER_ID)


def test_fast_audio_level_matches_aiortc() -> None:
    from aiortc import rtp

    frame = _decoded_tone()
    assert audio_level_dbov(frame) == rtp.compute_audio_level_dbov(frame)
    stock, fast = audio_level_cost(frames=2)
    assert stock > 0 and fast > 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert math.isnan(percentile([], 50))


def test_lossy_link_points_the_answer_at_itself_and_loses_reproducibly() -> None:
    from bench.lossy import point_candidates, random_loss

    answer = ("v=0\r\na=candidate:1 1 udp 2130706431 203.0.113.5 3478 typ host\r\n"
              "a=candidate:2 1 tcp 1 203.0.113.5 9 typ host tcptype passive\r\n"
              "a=candidate:3 1 udp 1 198.51.100.1 5000 typ host\r\n")
    pointed = point_candidates(answer, ("127.0.0.1", 4000))
    assert [ln for ln in pointed.splitlines() if ln.startswith("a=candidate")] == [
        "a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host"]
    first, second = random_loss(0.05, 7), random_loss(0.05, 7)
    pattern = [first("up", b"x") for _ in range(2000)]
    assert pattern == [second("up", b"x") for _ in range(2000)]
    assert 50 <= sum(pattern) <= 150
    assert not any(random_loss(0.0, 7)("up", b"x") for _ in range(100))


def test_c_forwarder_and_load_generator_forward_both_ways() -> None:
    """bench/cfwd.c and bench/udpblast.c compile, and datagrams go through both directions."""
    from bench.relay import throughput

    rate, per_cpu, _ = throughput("cfwd", ports=4, seconds=1.2)
    assert rate > 0 and per_cpu > 0


@pytest.mark.skipif(coturn() is None, reason="coturn not installed")
def test_coturn_relays_channel_data_of_a_bench_allocation() -> None:
    from bench.relay import throughput

    rate, _, _ = throughput("coturn", ports=4, seconds=1.2)
    assert rate > 0


def test_codec_costs_measure_both_voice_codecs() -> None:
    from bench.capacity_ab import codec_costs

    costs = codec_costs(frames=3, rounds=1)
    assert {"pyav", "direct"} <= set(costs) <= {"pyav", "direct", "speech"}
    assert all(cost > 0 for cost in costs.values())


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_voice_settings_are_priced_and_scored() -> None:
    """The default setting and a cheaper one: both encode and decode, and PESQ tells the
    speech apart from noise (the same encoded speech scores far above a random signal)."""
    import numpy as np

    from bench import voice
    from bench.capacity import speech_frames

    frames = speech_frames()[:100]
    priced = voice.price(voice.QUICK_SETTINGS, frames, rounds=1)
    assert [p.settings for p in priced] == list(voice.QUICK_SETTINGS)
    for p in priced:
        assert p.encode_us > 0 and p.decode_us > 0 and 10 < p.kbps < 64
        assert 3.0 < p.mos <= 4.64
    reference = voice._at_16k(frames)
    noise = np.random.default_rng(1).normal(0, 3000, len(reference)).astype(np.float32)
    assert voice.mos(reference, noise) < 2.0
    rows = voice.rows(priced, {voice.DEFAULT: voice.echo_floor(voice.DEFAULT, 3, 5)}, 3)
    _well_formed(rows)
    assert rows[0].ratio == 1.0 and "ceiling" in rows[2].name and rows[2].value > 0
    assert len(rows) == 5  # the floor is measured for the default only here


def test_repeated_runs_merge_to_medians_and_majority_verdicts() -> None:
    from bench.common import merge_runs

    def run(value: float, base: float, met: bool) -> list[Row]:
        return [Row("a", value, "ms", baseline=base, ratio=value / base, target="<= 10 ms",
                    met=met, note="n"), Row("b", value * 2, "x"), Row("c", float("nan"), "-")]

    merged = merge_runs([run(9.0, 2.0, True), run(12.0, 3.0, False), run(8.0, 2.5, True)])
    assert [r.name for r in merged] == ["a", "b", "c"]
    a, b, c = merged
    assert (a.value, a.baseline, a.ratio, a.met) == (9.0, 2.5, 4.0, True)  # 2 of 3 met
    assert a.note == "median of 3 runs (9, 12.0, 8); ratios 4.5, 4, 3.2; met in 2 of 3; last run: n"
    assert b.value == 18.0 and b.met is None and b.ratio is None
    assert math.isnan(c.value)
    assert merge_runs([run(1.0, 1.0, True)])[:2] == run(1.0, 1.0, True)[:2]  # one run: as is


def test_conditions_name_the_guest_halt_poll_window_where_there_is_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The latency rows depend on it (~85 us a hop at 0 here, ~10 at 1 ms): the table says it,
    on a guest whose cpuidle driver is haltpoll only."""
    from bench import common

    window, driver = tmp_path / "guest_halt_poll_ns", tmp_path / "current_driver"
    window.write_text("200000\n")
    driver.write_text("haltpoll\n")
    monkeypatch.setattr(common, "HALT_POLL", str(window))
    monkeypatch.setattr(common, "CPUIDLE_DRIVER", str(driver))
    assert common.conditions().endswith("; guest halt poll max 200 us")
    driver.write_text("intel_idle\n")  # bare metal: the governor's file exists, means nothing
    assert "halt poll" not in common.conditions()
    monkeypatch.setattr(common, "CPUIDLE_DRIVER", str(tmp_path / "absent"))
    assert "halt poll" not in common.conditions()


def _echoes(sessions: int, seconds: float, *, silent: dict[int, tuple[float, float]]
            ) -> list[list[float]]:
    """Each session's echo times every 20 ms (phases spread over the frame), none inside its
    ``silent`` stretch."""
    out = []
    for n in range(sessions):
        start, quiet = n * FRAME_S / sessions, silent.get(n, (0.0, 0.0))
        out.append([t for k in range(int(seconds / FRAME_S))
                    if not quiet[0] <= (t := start + k * FRAME_S) < quiet[1]])
    return out


def test_stalls_are_stretches_where_most_sessions_went_quiet_at_once() -> None:
    """A 200 ms silence of every session is one ~200 ms stall; one session's, or a minority's,
    is none; two stalls are two, in order."""
    everyone = dict.fromkeys(range(10), (1.0, 1.2))
    found = stalls(_echoes(10, 3.0, silent=everyone), 0.0, 3.0)
    assert len(found) == 1 and 160 <= found[0] <= 220
    assert stalls(_echoes(10, 3.0, silent={3: (1.0, 1.5)}), 0.0, 3.0) == ()
    minority = dict.fromkeys(range(5), (1.0, 1.2))  # half is not most
    assert stalls(_echoes(10, 3.0, silent=minority), 0.0, 3.0) == ()
    two = _echoes(10, 3.0, silent=everyone)
    for n, times in enumerate(_echoes(10, 3.0, silent=dict.fromkeys(range(10), (2.0, 2.1)))):
        two[n] = [t for t in two[n] if t in set(times)]
    found = stalls(two, 0.0, 3.0)
    assert len(found) == 2 and found[0] > found[1] > 40
    assert stalls(_echoes(10, 3.0, silent={}), 0.0, 3.0) == ()  # on time: nothing
