"""The relay's demux core, table-driven: datagrams and ``now`` in, actions out. No socket, loop
or Redis: every decision the daemon takes is asserted here."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from aioice import stun as aioice_stun

from fleet.addresses import Addr
from fleet.nodes import HEALTH_TRANSCEIVER_ID
from relays.actions import AnswerHealth, DrainState, Drop, DropReason, Forward, Lookup, SendToClient
from relays.demux import PENDING_PER_CLIENT, Demux, DemuxConfig
from relays.framing import pack_header
from relays.stun import parse_xor_mapped_address, transaction_id
from tests.relays.conftest import DTLS, KEYS, SHARD, XCVR, binding_request

T0 = 1000.0
CLIENT: Addr = ("192.0.2.10", 5000)
XCVR_ADDR: Addr = ("10.0.0.3", 7000)
OTHER_XCVR, OTHER_ADDR = 4, ("10.0.0.4", 7000)


def make_core(**overrides: Any) -> Demux:
    core = Demux(DemuxConfig(shard=SHARD, keyring=KEYS, **overrides))
    core.set_transceivers({XCVR: XCVR_ADDR, OTHER_XCVR: OTHER_ADDR})
    return core


def client(index: int) -> Addr:
    return ("192.0.2.20", 10_000 + index)


BINDING_RESPONSE = bytes(aioice_stun.Message(aioice_stun.Method.BINDING,
                                             aioice_stun.Class.RESPONSE))


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", DropReason.EMPTY),
        (BINDING_RESPONSE, DropReason.STUN_NOT_BINDING),
        (b"\x00\x01\x00\x00", DropReason.STUN_NOT_BINDING),  # STUN range, too short
        (binding_request(username=""), DropReason.BAD_STUN),  # no USERNAME
        (binding_request(username="nocolon"), DropReason.BAD_STUN),
        (binding_request(username="short:cli1"), DropReason.BAD_UFRAG),
        (binding_request(key=b"wrong-key"), DropReason.BAD_UFRAG),
        (binding_request(shard=SHARD + 1), DropReason.WRONG_SHARD),
        (binding_request(transceiver=99), DropReason.UNKNOWN_TRANSCEIVER),
    ],
    ids=lambda value: value.value if isinstance(value, DropReason) else None,
)
def test_client_datagram_drops(datagram: bytes, reason: DropReason) -> None:
    core = make_core()
    action = core.on_datagram(CLIENT, datagram, T0)
    assert isinstance(action, Drop) and action.reason is reason
    assert core.drops == {reason: 1}
    assert core.counters()[f"drop_{reason.value}"] == 1
    assert len(core.flows) == 0 and core.take_writes() == {}


@pytest.mark.parametrize(
    ("source", "frame", "reason"),
    [
        (("10.0.0.99", 7000), pack_header(CLIENT) + b"spoof", DropReason.FRAME_UNREGISTERED),
        (XCVR_ADDR, b"\xe1\x09garbage", DropReason.FRAME_MALFORMED),  # bad family
        (XCVR_ADDR, b"\x16\x04\x00\x01abcd", DropReason.FRAME_MALFORMED),  # bad magic
        (XCVR_ADDR, b"\xe1\x06\x00\x01abcd", DropReason.FRAME_MALFORMED),  # v6, too short
        (XCVR_ADDR, b"", DropReason.FRAME_MALFORMED),
    ],
    ids=lambda value: value.value if isinstance(value, DropReason) else None,
)
def test_frame_drops(source: Addr, frame: bytes, reason: DropReason) -> None:
    core = make_core()
    action = core.on_frame(source, frame, T0)
    assert isinstance(action, Drop) and action.reason is reason
    assert core.drops == {reason: 1} and len(core.flows) == 0 and core.take_writes() == {}


def test_stun_learns_then_known_client_forwards_without_parsing() -> None:
    core = make_core()
    request = binding_request()
    assert core.on_datagram(CLIENT, request, T0) == Forward(pack_header(CLIENT), XCVR_ADDR,
                                                            request)
    assert core.learned_stun == 1 and core.take_writes() == {CLIENT: XCVR}
    for junk in (DTLS, b"", b"\x00\x01\x00\x00"):  # known address: never parsed, never dropped
        assert core.on_datagram(CLIENT, junk, T0 + 1) == Forward(pack_header(CLIENT), XCVR_ADDR,
                                                                 junk)
    assert core.flows.get(CLIENT).last_seen == T0 + 1  # type: ignore[union-attr]
    assert not core.drops and core.take_writes() == {}


def test_health_probe_is_answered_and_learns_nothing() -> None:
    core = make_core()
    request = binding_request(transceiver=HEALTH_TRANSCEIVER_ID)
    action = core.on_datagram(CLIENT, request, T0)
    assert isinstance(action, AnswerHealth) and action.client == CLIENT
    assert transaction_id(action.response) == transaction_id(request)
    assert parse_xor_mapped_address(action.response) == CLIENT
    assert core.health_answered == 1 and len(core.flows) == 0 and not core.drops
    forged = binding_request(transceiver=HEALTH_TRANSCEIVER_ID, key=b"forged")
    assert core.on_datagram(CLIENT, forged, T0) == Drop(DropReason.BAD_UFRAG, "bad ufrag mac")


def test_redis_lookup_holds_then_learns_in_order() -> None:
    core = make_core()
    held = [DTLS + bytes([n]) for n in range(PENDING_PER_CLIENT)]
    for data in held:
        assert core.on_datagram(CLIENT, data, T0) == Lookup(CLIENT)
    overflow = core.on_datagram(CLIENT, DTLS, T0)
    assert overflow == Drop(DropReason.LOOKUP_QUEUE_FULL)
    assert core.pending_lookups() == [CLIENT]
    out = core.on_lookup_result([CLIENT], [str(XCVR).encode()], T0 + 0.01)
    assert out == [Forward(pack_header(CLIENT), XCVR_ADDR, data) for data in held]
    assert core.learned_redis == 1 and core.take_writes() == {CLIENT: XCVR}
    assert core.pending_lookups() == [] and core.drops == {DropReason.LOOKUP_QUEUE_FULL: 1}


def test_redis_miss_is_negative_cached_until_it_expires() -> None:
    core = make_core(negative_ttl=3.0)
    assert core.on_datagram(CLIENT, DTLS, T0) == Lookup(CLIENT)
    assert core.on_lookup_result([CLIENT], [None], T0) == []
    assert core.on_datagram(CLIENT, DTLS, T0 + 2.9) == Drop(DropReason.REDIS_MISS)
    assert core.drops == {DropReason.REDIS_MISS: 2}  # the held one and the cached one
    assert core.on_datagram(CLIENT, DTLS, T0 + 3.1) == Lookup(CLIENT)
    assert core.on_lookup_result([CLIENT], [b"not-a-number"], T0 + 3.1) == []
    assert core.drops == {DropReason.REDIS_MISS: 3}


def test_lookup_busy_bounds_the_clients_waiting() -> None:
    core = make_core(max_lookups=2)
    assert [core.on_datagram(client(n), DTLS, T0) for n in range(3)] == [
        Lookup(client(0)), Lookup(client(1)), Drop(DropReason.LOOKUP_BUSY)
    ]
    core.on_lookup_failed(core.pending_lookups())  # Redis down: what was held is dropped
    assert core.drops == {DropReason.LOOKUP_BUSY: 1, DropReason.REDIS_DOWN: 2}
    assert core.on_datagram(client(2), DTLS, T0) == Lookup(client(2))


def test_lookup_result_for_a_client_learned_meanwhile_uses_that_flow() -> None:
    core = make_core()
    assert core.on_datagram(CLIENT, DTLS, T0) == Lookup(CLIENT)
    core.on_frame(OTHER_ADDR, pack_header(CLIENT) + b"hi", T0)  # learned from a frame meanwhile
    out = core.on_lookup_result([CLIENT], [str(XCVR).encode()], T0)
    assert out == [Forward(pack_header(CLIENT), OTHER_ADDR, DTLS)]
    assert (core.learned_redis, core.learned_frame) == (0, 1)


def test_lookup_result_naming_an_unknown_transceiver_drops() -> None:
    core = make_core()
    core.on_datagram(CLIENT, DTLS, T0)
    assert core.on_lookup_result([CLIENT], [b"99"], T0) == []
    assert core.drops == {DropReason.UNKNOWN_TRANSCEIVER: 1} and len(core.flows) == 0


def test_frame_learns_and_relearns_its_client() -> None:
    core = make_core()
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"hello", T0) == SendToClient(CLIENT, 8)
    assert core.learned_frame == 1 and core.take_writes() == {CLIENT: XCVR}
    assert core.on_datagram(CLIENT, DTLS, T0) == Forward(pack_header(CLIENT), XCVR_ADDR, DTLS)
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"again", T0) == SendToClient(CLIENT, 8)
    assert core.learned_frame == 1  # known header: no relearn
    v6 = ("2001:db8::1", 443)
    assert core.on_frame(OTHER_ADDR, pack_header(v6) + b"x", T0) == SendToClient(v6, 20)
    assert core.on_frame(OTHER_ADDR, pack_header(CLIENT) + b"moved", T0) == SendToClient(CLIENT, 8)
    assert core.learned_frame == 3 and core.take_writes() == {CLIENT: OTHER_XCVR, v6: OTHER_XCVR}
    assert core.on_datagram(CLIENT, DTLS, T0) == Forward(pack_header(CLIENT), OTHER_ADDR, DTLS)


def test_registry_change_moves_flows_and_unregisters_frames() -> None:
    core = make_core()
    core.on_datagram(CLIENT, binding_request(), T0)
    core.set_transceivers({XCVR: ("10.0.0.33", 7001)})  # restarted elsewhere; 4 left
    assert core.on_datagram(CLIENT, DTLS, T0) == Forward(pack_header(CLIENT), ("10.0.0.33", 7001),
                                                         DTLS)
    assert core.on_frame(OTHER_ADDR, pack_header(CLIENT), T0) == Drop(
        DropReason.FRAME_UNREGISTERED)


def test_frames_route_without_the_core_only_for_confirmed_flows_of_registered_transceivers(
) -> None:
    """``routes_frames``: what a fast path may send without asking the core (it mirrors this)."""
    core = make_core()
    core.on_datagram(CLIENT, binding_request(), T0)
    flow = core.flows.get(CLIENT)
    assert flow is not None and not core.routes_frames(flow)  # unconfirmed: the core confirms
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT), T0) == SendToClient(CLIENT, 8)
    assert core.routes_frames(flow)
    changed = []
    core.flows.watcher = type("W", (), {  # type: ignore[assignment]
        "flow_changed": lambda self, f: changed.append(core.routes_frames(f)),
        "flow_removed": lambda self, f: None})()
    core.set_transceivers({XCVR: XCVR_ADDR, OTHER_XCVR: OTHER_ADDR})  # unchanged: no news
    assert changed == []
    core.set_transceivers({OTHER_XCVR: OTHER_ADDR})  # 3 deregistered: its frames need the core
    assert changed == [False] and not core.routes_frames(flow)
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT), T0) == Drop(
        DropReason.FRAME_UNREGISTERED)


def test_expiry_queues_deletes_and_prunes_the_negative_cache() -> None:
    core = make_core(idle_timeout=60.0, negative_ttl=3.0)
    core.on_datagram(CLIENT, binding_request(), T0)
    core.on_datagram(client(1), DTLS, T0)
    core.on_lookup_result([client(1)], [None], T0)
    core.take_writes()
    assert core.expire(T0 + 59.0) == [] and core.take_writes() == {}
    gone = core.expire(T0 + 61.0)
    assert [flow.client for flow in gone] == [CLIENT]
    assert core.take_writes() == {CLIENT: None}
    assert core.counters()["flows_expired"] == 1 and len(core.flows) == 0
    assert core.on_datagram(client(1), DTLS, T0 + 61.0) == Lookup(client(1))  # miss forgotten


def test_refresh_requeues_active_flows_and_failed_writes_come_back() -> None:
    core = make_core()
    core.on_datagram(CLIENT, binding_request(), T0)
    core.on_datagram(client(1), binding_request(), T0 + 10)
    batch = core.take_writes()
    core.refresh(since=T0 + 5)
    assert core.take_writes() == {client(1): XCVR}
    core.on_frame(OTHER_ADDR, pack_header(CLIENT), T0 + 11)  # newer than the failed batch
    core.restore_writes(batch)
    assert core.take_writes() == {CLIENT: OTHER_XCVR, client(1): XCVR}


def test_drain_waits_for_quiet_flows_or_the_grace_period() -> None:
    core = make_core(drain_idle=3.0, drain_grace=10.0)
    core.on_datagram(CLIENT, binding_request(), T0)
    assert core.check_drain(False, T0) is DrainState.SERVING
    assert core.check_drain(True, T0 + 1) is DrainState.DRAINING
    core.on_datagram(CLIENT, DTLS, T0 + 3)
    assert core.check_drain(True, T0 + 5) is DrainState.DRAINING  # a packet 2 s ago
    assert core.check_drain(False, T0 + 5) is DrainState.SERVING  # cancelled: resume
    assert core.drain_started is None
    assert core.check_drain(True, T0 + 6) is DrainState.DRAINING
    assert core.check_drain(True, T0 + 6.5) is DrainState.DRAINED  # quiet for 3.5 s
    for second in range(7, 17):  # a flow that never goes quiet: the grace period ends it
        core.on_datagram(CLIENT, DTLS, T0 + second)
    assert core.check_drain(True, T0 + 16) is DrainState.DRAINED


# learning limits (a replayed or forged-source STUN flood) ----------------------------------------

def test_one_ufrag_learns_a_bounded_number_of_sources() -> None:
    core = make_core(max_flows_per_ufrag=8, idle_timeout=60.0)
    captured = binding_request()
    actions = [core.on_datagram(client(n), captured, T0) for n in range(20_000)]
    assert all(isinstance(a, Forward) for a in actions[:8])
    assert set(actions[8:]) == {Drop(DropReason.UFRAG_FLOWS_FULL)}
    assert core.drops == {DropReason.UFRAG_FLOWS_FULL: 20_000 - 8}
    assert len(core.flows) == 8 and len(core.take_writes()) == 8  # 8 Redis keys, not 20k
    assert core.on_datagram(client(0), DTLS, T0 + 30) == Forward(pack_header(client(0)),
                                                                 XCVR_ADDR, DTLS)
    core.expire(T0 + 61)  # seven went quiet: their slots free up for new sources
    assert len(core.flows) == 1
    assert isinstance(core.on_datagram(client(50_000), captured, T0 + 61), Forward)


def test_learning_is_rate_limited_by_a_token_bucket() -> None:
    core = make_core(learn_rate=10.0, learn_burst=20.0)
    requests = [binding_request(nonce=n.to_bytes(4, "big")) for n in range(40)]
    actions = [core.on_datagram(client(n), requests[n], T0) for n in range(21)]
    assert all(isinstance(a, Forward) for a in actions[:20])
    assert actions[20] == Drop(DropReason.LEARN_RATE)
    assert core.on_datagram(client(21), requests[21], T0 + 0.05) == Drop(DropReason.LEARN_RATE)
    assert isinstance(core.on_datagram(client(22), requests[22], T0 + 0.1), Forward)  # 1 token
    assert core.drops == {DropReason.LEARN_RATE: 2} and core.learned_stun == 21
    # Known clients never need a token, and frames from transceivers learn without one.
    assert isinstance(core.on_datagram(client(0), DTLS, T0 + 0.1), Forward)
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT), T0 + 0.1) == SendToClient(CLIENT, 8)


def test_a_flood_evicts_new_unconfirmed_flows_not_live_calls() -> None:
    core = make_core(max_flows=4, learn_rate=1e9, learn_burst=1e9)
    live = [CLIENT, client(1)]
    for index, address in enumerate(live):
        request = binding_request(nonce=bytes([0, 0, 0, index]))
        assert isinstance(core.on_datagram(address, request, T0), Forward)
        core.on_frame(XCVR_ADDR, pack_header(address) + b"answer", T0)  # confirmed
    core.take_writes()
    flood = [("198.51.100.7", port) for port in range(1000)]
    for port, address in enumerate(flood):
        core.on_datagram(address, binding_request(nonce=(1000 + port).to_bytes(4, "big")), T0)
    assert all(core.flows.get(address) is not None for address in live)
    assert len(core.flows) == 4 and core.counters()["flows_evicted"] == 998
    writes = core.take_writes()  # every evicted flow's key is deleted, not left to its TTL
    assert [writes[a] for a in flood[1:999]] == [None] * 998  # each newcomer evicts the last
    assert writes[flood[0]] == writes[flood[999]] == XCVR
    for address in live:
        assert core.on_datagram(address, DTLS, T0 + 1) == Forward(pack_header(address),
                                                                  XCVR_ADDR, DTLS)


def test_every_table_is_empty_again_after_the_flood_expires() -> None:
    core = make_core(max_flows=2000, idle_timeout=60.0, max_lookups=64)
    captured = [binding_request(nonce=n.to_bytes(4, "big")) for n in range(300)]
    for n in range(20_000):
        core.on_datagram(client(n), captured[n % 300], T0 + n / 1e4)  # STUN flood, 2 s
        core.on_datagram(("203.0.113.9", n), DTLS, T0 + n / 1e4)  # non-STUN flood
    core.on_lookup_result(core.pending_lookups(), [None] * len(core.pending_lookups()), T0 + 2)
    assert len(core.flows) > 0 and core.take_writes()
    core.expire(T0 + 70)
    deletes = core.take_writes()
    assert deletes and set(deletes.values()) == {None}
    tables = core.flows._flows, core.flows._by_header, core.flows._unconfirmed, \
        core.flows._per_ufrag, core._negative, core._pending, core._writes
    assert [len(table) for table in tables] == [0] * len(tables)
    assert max(sys.getsizeof(table) for table in tables) <= sys.getsizeof({})


# an unknown transceiver triggers an early registry poll, at most every repoll_interval ----------

@pytest.mark.parametrize(
    ("steps", "due"),
    [
        ([], [False]),
        (["frame"], [True, False]),  # asked once, not again without a new miss
        (["binding"], [True]),
        (["lookup"], [True]),
        (["frame", "frame"], [True, False]),
    ],
)
def test_registry_repoll_is_due_after_a_miss(steps: list[str], due: list[bool]) -> None:
    core = make_core()
    for step in steps:
        if step == "frame":
            core.on_frame(("10.0.0.99", 1), pack_header(CLIENT), T0)
        elif step == "binding":
            core.on_datagram(CLIENT, binding_request(transceiver=99), T0)
        else:
            core.on_datagram(CLIENT, DTLS, T0)
            core.on_lookup_result([CLIENT], [b"99"], T0)
    assert [core.registry_repoll_due(T0) for _ in due] == due
    assert core.counters()["registry_repolls"] == sum(due)


def test_registry_repolls_are_rate_limited() -> None:
    core = make_core(repoll_interval=0.5)
    times = [T0, T0 + 0.1, T0 + 0.4, T0 + 0.5, T0 + 0.6, T0 + 1.2]
    due = []
    for now in times:
        core.on_frame(("10.0.0.99", 1), pack_header(CLIENT), now)
        due.append(core.registry_repoll_due(now))
    assert due == [True, False, False, True, False, True]
    assert core.counters()["drop_frame_unregistered"] == len(times)


@pytest.mark.parametrize(
    ("received_at", "fresh"),
    [(None, True), (T0, True), (T0 - 0.5, True), (T0 - 0.51, False), (T0 - 10.0, False),
     (T0 + 1.0, True)],  # None: no kernel timestamp; later than now: a clock step, not stale
)
def test_datagrams_queued_longer_than_max_queue_age_are_stale(
    received_at: float | None, fresh: bool
) -> None:
    core = make_core(max_queue_age=0.5)
    assert core.fresh(received_at, T0) is fresh
    assert core.counters()["drop_stale"] == (0 if fresh else 1)


# The local address a client sends to (the shell's IP_PKTINFO, opaque here) ----------------------

LOCAL_A, LOCAL_B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])


def test_replies_leave_from_the_local_address_the_client_last_sent_to() -> None:
    core = make_core()
    seen: list[bytes | None] = []

    class Watcher:
        def flow_changed(self, flow: Any) -> None:
            seen.append(flow.local)

        def flow_removed(self, flow: Any) -> None:
            pass

    core.flows.watcher = Watcher()
    core.on_datagram(CLIENT, binding_request(), T0, LOCAL_A)
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"x", T0) == SendToClient(CLIENT, 8,
                                                                                    LOCAL_A)
    assert core.on_datagram(CLIENT, DTLS, T0, LOCAL_A) == Forward(pack_header(CLIENT), XCVR_ADDR,
                                                                  DTLS)
    assert seen == [LOCAL_A, LOCAL_A]  # learned, confirmed: the same address is no change
    core.on_datagram(CLIENT, DTLS, T0 + 1, LOCAL_B)
    assert seen[-1] == LOCAL_B  # the mirror hears of the new address
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"x", T0) == SendToClient(CLIENT, 8,
                                                                                    LOCAL_B)
    core.on_datagram(CLIENT, DTLS, T0 + 2)  # a shell that does not know it keeps the last one
    assert core.flows.get(CLIENT).local == LOCAL_B  # type: ignore[union-attr]


def test_frame_learned_flow_takes_the_local_address_of_its_client_first_datagram() -> None:
    core = make_core()
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"x", T0) == SendToClient(CLIENT, 8)
    core.on_datagram(CLIENT, DTLS, T0, LOCAL_B)
    assert core.on_frame(XCVR_ADDR, pack_header(CLIENT) + b"x", T0) == SendToClient(CLIENT, 8,
                                                                                    LOCAL_B)


def test_health_answer_and_redis_learned_flow_keep_the_local_address() -> None:
    core = make_core()
    answer = core.on_datagram(CLIENT, binding_request(transceiver=HEALTH_TRANSCEIVER_ID), T0,
                              LOCAL_B)
    assert isinstance(answer, AnswerHealth) and answer.local == LOCAL_B
    assert core.on_datagram(client(1), DTLS, T0, LOCAL_B) == Lookup(client(1))
    core.on_lookup_result([client(1)], [str(XCVR).encode()], T0)
    assert core.on_frame(XCVR_ADDR, pack_header(client(1)) + b"x", T0) == SendToClient(
        client(1), 8, LOCAL_B)
