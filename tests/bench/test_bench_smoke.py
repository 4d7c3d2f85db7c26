"""Smoke test of the benchmark plumbing with tiny sizes: rows are well-formed. Never timed."""

from __future__ import annotations

import math

from bench import flows
from bench.capacity import _decoded_tone, audio_level_cost
from bench.common import Row, format_table, percentile
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
