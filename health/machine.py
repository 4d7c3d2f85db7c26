"""The node health state machine and the rebalancing rule (pure: no clock, DB, Redis or I/O).

healthy -> suspect -> down on consecutive missed probes; suspect/down -> healthy after
consecutive good probes; full at capacity; draining when the node says so (operator or SIGTERM)
and sticky while the operator's mark stands. Probes are numbered by ``tick`` (the beat slot), so
a probe that runs twice for one tick is recorded once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from fleet.nodes import NodeState


@dataclass(frozen=True)
class Thresholds:
    suspect_after: int = 1  # consecutive missed probes
    down_after: int = 2
    recover_after: int = 2  # consecutive good probes back to healthy
    full_load: float = 1.0  # sessions / capacity at which a transceiver is full


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one node. ``reason`` says why it failed (or ``ok``)."""

    ok: bool
    reason: str = "ok"
    rtt_ms: float | None = None
    load: float | None = None  # live sessions / capacity (transceivers only)
    loop_lag_ms: float | None = None
    draining: bool = False  # the node reports it is draining
    incarnation: str | None = None  # the transceiver process that answered the ping


@dataclass(frozen=True)
class ProbeMemory:
    """What the checker remembers of a node between probes (stored as JSON in Redis)."""

    tick: int = -1
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive
    rtt_ms: float | None = None
    load: float | None = None
    loop_lag_ms: float | None = None
    reason: str = ""
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ProbeMemory:
        return cls() if not text else cls(**json.loads(text))


def remember(memory: ProbeMemory, result: ProbeResult, *, tick: int, now: float) -> ProbeMemory:
    """Fold a probe into the memory; ``ValueError("stale tick")`` if this tick was recorded."""
    if tick <= memory.tick:
        raise ValueError("stale tick")
    return replace(
        memory, tick=tick,
        failures=0 if result.ok else memory.failures + 1,
        successes=memory.successes + 1 if result.ok else 0,
        rtt_ms=result.rtt_ms, load=result.load, loop_lag_ms=result.loop_lag_ms,
        reason=result.reason, at=now,
    )


def next_state(
    current: str, result: ProbeResult, memory: ProbeMemory, thresholds: Thresholds,
    *, drain_requested: bool = True,
) -> tuple[NodeState, str]:
    """The state after ``result`` (already folded into ``memory``) and the reason for it.

    ``drain_requested``: an operator's drain is still asked for (its Redis key exists). Without
    it, a ``draining`` node whose probes say it no longer drains is back in service: that is an
    operator's resume, or a probe answered just before the resume reached the node.
    """
    state = NodeState(current)
    if not result.ok:
        if memory.failures >= thresholds.down_after:
            return NodeState.DOWN, f"{memory.failures} missed probes: {result.reason}"
        if state in (NodeState.DOWN, NodeState.DRAINING):
            return state, ""  # down stays down; draining waits for down_after misses
        if memory.failures >= thresholds.suspect_after:
            return NodeState.SUSPECT, f"missed probe: {result.reason}"
        return state, ""
    if result.draining:
        return NodeState.DRAINING, "node reports draining"
    if state is NodeState.DRAINING:
        if drain_requested:
            return state, ""  # marked by an operator; the node has not picked it up yet
        return NodeState.HEALTHY, "no longer draining"
    if state in (NodeState.DOWN, NodeState.SUSPECT) and memory.successes < thresholds.recover_after:
        return state, ""
    if result.load is not None and result.load >= thresholds.full_load:
        return NodeState.FULL, f"at capacity ({result.load:.0%})"
    if state in (NodeState.DOWN, NodeState.SUSPECT):
        return NodeState.HEALTHY, f"recovered: {memory.successes} good probes"
    if state is NodeState.FULL:
        return NodeState.HEALTHY, f"below capacity ({result.load or 0:.0%})"
    return NodeState.HEALTHY, "probes ok" if state is NodeState.UNKNOWN else ""


def rebalance_holds(
    loads: Mapping[int, float], *, held: Mapping[int, str], skew: float
) -> dict[int, str]:
    """Transceivers of one region that should get no new sessions, with the reason.

    A transceiver is held when its load exceeds the region mean by more than ``skew`` and stays
    held until it is within ``skew / 2`` of the mean (hysteresis). Live sessions never move.
    """
    if len(loads) < 2:
        return {}
    mean = sum(loads.values()) / len(loads)
    holds: dict[int, str] = {}
    for node, load in loads.items():
        limit = mean + (skew / 2 if node in held else skew)
        if load > limit:
            holds[node] = held.get(node) or f"load {load:.0%} > region mean {mean:.0%} + {skew:.0%}"
    if len(holds) == len(loads):  # everyone above the mean is impossible, but never hold all
        return {}
    return holds
