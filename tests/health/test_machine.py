"""The pure health state machine and rebalancing rule: no DB, Redis, socket or clock."""

from __future__ import annotations

import pytest

from fleet.nodes import NodeState
from health.machine import (
    ProbeMemory,
    ProbeResult,
    Thresholds,
    next_state,
    rebalance_holds,
    remember,
)

T = Thresholds(suspect_after=1, down_after=2, recover_after=2)
OK = ProbeResult(True, rtt_ms=0.3, load=0.1)
MISS = ProbeResult(False, "no ping reply in 1s")


def run(states: list[ProbeResult], start: str = NodeState.HEALTHY) -> list[tuple[str, str]]:
    """Feed probes one tick at a time; return (state, reason) after each."""
    memory, state, seen = ProbeMemory(), start, []
    for tick, result in enumerate(states):
        memory = remember(memory, result, tick=tick, now=float(tick))
        new, reason = next_state(state, result, memory, T)
        state = new
        seen.append((str(new), reason))
    return seen


def test_missed_probes_go_suspect_then_down_with_reasons() -> None:
    seen = run([OK, MISS, MISS, MISS])
    assert [s for s, _ in seen] == ["healthy", "suspect", "down", "down"]
    assert seen[1][1] == "missed probe: no ping reply in 1s"
    assert seen[2][1] == "2 missed probes: no ping reply in 1s"


def test_recovery_needs_consecutive_good_probes() -> None:
    seen = run([MISS, MISS, OK, MISS, OK, OK], start=NodeState.HEALTHY)
    assert [s for s, _ in seen] == ["suspect", "down", "down", "down", "down", "healthy"]
    assert seen[-1][1] == "recovered: 2 good probes"


def test_one_miss_then_good_probes_returns_from_suspect() -> None:
    assert [s for s, _ in run([MISS, OK, OK])] == ["suspect", "suspect", "healthy"]


def test_unknown_node_becomes_healthy_on_its_first_good_probe() -> None:
    assert run([OK], start=NodeState.UNKNOWN) == [("healthy", "probes ok")]


def test_full_at_capacity_and_back() -> None:
    full = ProbeResult(True, load=1.0)
    seen = run([OK, full, full, OK])
    assert [s for s, _ in seen] == ["healthy", "full", "full", "healthy"]
    assert seen[1][1] == "at capacity (100%)"


def test_draining_is_reported_by_the_node_and_sticky_until_down() -> None:
    draining = ProbeResult(True, load=0.5, draining=True)
    assert run([draining])[0] == ("draining", "node reports draining")
    # An operator's mark holds while the node has not picked it up, and one miss keeps it.
    assert [s for s, _ in run([OK, MISS], start=NodeState.DRAINING)] == ["draining", "draining"]
    # The drained process exits: after down_after misses it is down.
    assert run([MISS, MISS], start=NodeState.DRAINING)[-1][0] == "down"


def test_a_resumed_node_leaves_draining_even_after_a_stale_draining_probe() -> None:
    """The operator resumes (drain key gone); a probe answered before the node heard of it
    still says draining; the next probes say it serves: back to healthy, never stuck."""
    draining = ProbeResult(True, load=0.5, draining=True)
    memory, state, seen = ProbeMemory(), NodeState.UNKNOWN, []
    for tick, result in enumerate([draining, OK, OK]):
        memory = remember(memory, result, tick=tick, now=float(tick))
        state, _ = next_state(state, result, memory, T, drain_requested=False)
        seen.append(str(state))
    assert seen == ["draining", "healthy", "healthy"]


def test_a_tick_is_recorded_once() -> None:
    memory = remember(ProbeMemory(), MISS, tick=7, now=1.0)
    with pytest.raises(ValueError, match="stale tick"):
        remember(memory, MISS, tick=7, now=1.5)
    with pytest.raises(ValueError, match="stale tick"):
        remember(memory, MISS, tick=6, now=1.5)
    assert remember(memory, MISS, tick=8, now=2.0).failures == 2


def test_memory_json_round_trip() -> None:
    memory = remember(ProbeMemory(), OK, tick=3, now=9.5)
    assert ProbeMemory.from_json(memory.to_json()) == memory
    assert ProbeMemory.from_json(None) == ProbeMemory()


def test_rebalance_holds_the_skewed_and_releases_with_hysteresis() -> None:
    loads = {1: 0.9, 2: 0.1, 3: 0.2}  # mean 0.4
    holds = rebalance_holds(loads, held={}, skew=0.25)
    assert list(holds) == [1] and "region mean 40%" in holds[1]
    # Falls to 0.6 (mean 0.3): above mean + skew/2 = 0.425, still held; new nodes are not.
    assert list(rebalance_holds({1: 0.6, 2: 0.1, 3: 0.2}, held=holds, skew=0.25)) == [1]
    assert rebalance_holds({1: 0.4, 2: 0.3, 3: 0.3}, held=holds, skew=0.25) == {}


def test_rebalance_needs_two_nodes_and_never_holds_everyone() -> None:
    assert rebalance_holds({1: 1.0}, held={}, skew=0.1) == {}
    assert rebalance_holds({1: 0.5, 2: 0.5}, held={}, skew=0.0) == {}
