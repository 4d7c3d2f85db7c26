"""The ICE-TCP core, table-driven: bytes and ``now`` in, actions out (no socket, no loop)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from relays.actions import AnswerHealth, Drop, DropReason, Forward, SendToClient
from relays.demux import Demux, DemuxConfig
from relays.framing import pack_header, parse_header
from relays.tcpmux import (
    ALIAS_INDEXES,
    ALIAS_NETWORK,
    AliasPool,
    CloseConn,
    Deframer,
    SendToTcp,
    TcpClose,
    TcpConn,
    TcpDrop,
    TcpLimits,
    TcpReject,
    alias_addr,
    is_alias,
    pack_frame,
)
from tests.relays.conftest import DTLS, KEYS, SHARD, XCVR, binding_request

T0 = 1000.0
XCVR_ADDR = ("10.0.0.3", 7000)
PEER = "198.51.100.7"


def make_core(**limits: Any) -> Demux:
    core = Demux(DemuxConfig(shard=SHARD, keyring=KEYS, tcp=TcpLimits(**limits), alias_start=1))
    core.set_transceivers({XCVR: XCVR_ADDR})
    return core


def opened(core: Demux, peer: str = PEER, now: float = T0) -> TcpConn:
    conn = core.tcp.open(peer, now)
    assert isinstance(conn, TcpConn)
    return conn


def bind(core: Demux, conn: TcpConn, now: float = T0) -> None:
    request = binding_request()
    assert core.tcp.receive(conn, pack_frame(request), now) == [
        Forward(conn.header, XCVR_ADDR, request)
    ]


# RFC 4571 framing --------------------------------------------------------------------------------


def test_pack_frame_prefixes_the_big_endian_length() -> None:
    assert pack_frame(b"abc") == b"\x00\x03abc"
    assert pack_frame(b"") == b"\x00\x00"
    with pytest.raises(ValueError, match="^packet too large$"):
        pack_frame(b"x" * 65536)


def test_deframer_reassembles_any_split_of_the_stream() -> None:
    packets = [b"a", b"", b"b" * 300, DTLS, b"c" * 1500]
    stream = b"".join(pack_frame(p) for p in packets)
    rng = random.Random(7)
    for _ in range(50):
        deframer, got, at = Deframer(1500), [], 0
        while at < len(stream):
            step = rng.randint(1, 40)
            got += deframer.feed(stream[at:at + step])
            at += step
        assert got == packets and deframer.buffered == 0


def test_deframer_holds_a_partial_length_and_a_partial_packet() -> None:
    deframer = Deframer(100)
    assert deframer.feed(b"\x00") == []
    assert deframer.feed(b"\x05ab") == []
    assert deframer.buffered == 4
    assert deframer.feed(b"cde\x00\x01") == [b"abcde"]
    assert deframer.feed(b"z") == [b"z"]


@pytest.mark.parametrize("prefix", [b"\xff\xff", b"\x05\xdd", b"\x00\x02ab\x10\x00"])
def test_deframer_refuses_a_length_over_the_maximum_before_buffering_it(prefix: bytes) -> None:
    deframer = Deframer(1500)
    with pytest.raises(ValueError, match="^frame too large$"):
        deframer.feed(prefix)
    assert deframer.buffered <= len(prefix)


# aliases ----------------------------------------------------------------------------------------


def test_alias_encodes_shard_worker_and_index_in_the_shared_address_space() -> None:
    seen = set()
    for shard, worker, index in [(1, 0, 1), (1, 1, 1), (2, 0, 1), (65535, 15, ALIAS_INDEXES - 1),
                                 (1, 0, 0x10001)]:
        addr = alias_addr(shard, worker, index)
        assert ipaddress.ip_address(addr[0]) in ALIAS_NETWORK and 1 <= addr[1] <= 0xFFFF
        assert is_alias(addr)
        seen.add(addr)
    assert len(seen) == 5
    assert not is_alias(("100.128.0.1", 1)) and not is_alias(("192.0.2.1", 1))
    assert not is_alias(("::1", 1)) and not is_alias(("not-an-ip", 1))
    for bad in [(65536, 0, 1), (1, 16, 1), (1, 0, 0), (1, 0, ALIAS_INDEXES), (1, 0, 0x10000)]:
        with pytest.raises(ValueError, match="^alias out of range$"):
            alias_addr(*bad)


def test_alias_pool_hands_out_distinct_aliases_and_reuses_a_freed_one_last() -> None:
    pool = AliasPool(shard=SHARD, worker=0, start=ALIAS_INDEXES - 2)
    first = pool.allocate()
    second = pool.allocate()  # wraps past index 0 (port 0 is no address)
    assert first is not None and second is not None
    assert (first[0], second[0]) == (ALIAS_INDEXES - 2, ALIAS_INDEXES - 1)
    third = pool.allocate()
    assert third is not None and third[0] == 1
    pool.free(first[0])
    assert len(pool) == 2
    fourth = pool.allocate()
    assert fourth is not None and fourth[0] == 2  # the freed one waits for the whole range


# the first packet ---------------------------------------------------------------------------


def test_a_valid_binding_binds_the_connection_and_later_packets_follow_it() -> None:
    core = make_core()
    conn = opened(core)
    assert is_alias(conn.alias) and conn.header == pack_header(conn.alias)
    bind(core, conn)
    assert conn.transceiver_id == XCVR
    stream = pack_frame(DTLS) + pack_frame(b"\x80rtp")
    assert core.tcp.receive(conn, stream[:5], T0 + 1) == []
    assert core.tcp.receive(conn, stream[5:], T0 + 1) == [
        Forward(conn.header, XCVR_ADDR, DTLS), Forward(conn.header, XCVR_ADDR, b"\x80rtp")
    ]
    assert core.counters()["tcp_bound"] == 1 and core.counters()["tcp_connections"] == 1
    assert not core.drops  # TCP traffic leaves the UDP counters alone


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (DTLS, TcpClose.NOT_BINDING),
        (b"GET / HTTP/1.1\r\n\r\n", TcpClose.NOT_BINDING),
        (binding_request(username=""), TcpClose.BAD_BINDING),
        (binding_request(username="short:cli1"), TcpClose.BAD_BINDING),
        (binding_request(key=b"wrong-key"), TcpClose.BAD_BINDING),
        (binding_request(shard=SHARD + 1), TcpClose.BAD_BINDING),
        (binding_request(transceiver=99), TcpClose.BAD_BINDING),
    ],
    ids=["dtls", "http", "no-username", "short-ufrag", "wrong-key", "wrong-shard", "unknown"],
)
def test_a_bad_first_packet_closes_the_connection(packet: bytes, reason: TcpClose) -> None:
    core = make_core()
    conn = opened(core)
    actions = core.tcp.receive(conn, pack_frame(packet) + pack_frame(DTLS), T0)
    assert actions == [CloseConn(reason)]  # nothing after it is looked at
    assert conn.closed is reason
    assert core.counters()[f"tcp_closed_{reason.value}"] == 1
    assert core.counters()["tcp_connections"] == 0 and len(core.tcp.aliases) == 0


def test_a_huge_length_prefix_closes_at_once() -> None:
    core = make_core(max_frame=1500)
    conn = opened(core)
    assert core.tcp.receive(conn, b"\xff\xff", T0) == [CloseConn(TcpClose.FRAME_TOO_LARGE)]
    bound = opened(core)
    bind(core, bound)
    assert core.tcp.receive(bound, b"\x05\xdd", T0) == [CloseConn(TcpClose.FRAME_TOO_LARGE)]
    assert core.counters()["tcp_closed_frame_too_large"] == 2


def test_empty_frames_are_dropped_and_counted_not_fatal() -> None:
    core = make_core()
    conn = opened(core)
    assert core.tcp.receive(conn, b"\x00\x00", T0) == []
    bind(core, conn)
    assert core.tcp.drops == {TcpDrop.EMPTY: 1}


def test_a_health_probe_over_tcp_is_answered_and_the_connection_stays_unbound() -> None:
    core = make_core()
    conn = opened(core)
    [answer] = core.tcp.receive(conn, pack_frame(binding_request(transceiver=0)), T0)
    assert isinstance(answer, AnswerHealth)
    assert conn.transceiver is None and conn.closed is None


def test_connections_per_ufrag_are_bounded() -> None:
    core = make_core(max_per_ufrag=2)
    for _ in range(2):
        bind(core, opened(core))
    conn = opened(core)
    assert core.tcp.receive(conn, pack_frame(binding_request()), T0) == [
        CloseConn(TcpClose.UFRAG_FULL)
    ]


# limits, expiry --------------------------------------------------------------------------------


def test_connections_are_capped_per_ip_and_in_total() -> None:
    core = make_core(max_per_ip=2, max_connections=3)
    a, _ = opened(core, "192.0.2.1"), opened(core, "192.0.2.1")
    assert core.tcp.open("192.0.2.1", T0) is TcpReject.PER_IP
    opened(core, "192.0.2.2")
    assert core.tcp.open("192.0.2.3", T0) is TcpReject.TOTAL
    core.tcp.close(a, TcpClose.PEER_CLOSED)
    assert isinstance(core.tcp.open("192.0.2.1", T0), TcpConn)
    counts = core.counters()
    assert (counts["tcp_rejected_per_ip"], counts["tcp_rejected_total"]) == (1, 1)
    assert counts["tcp_accepted"] == 4 and counts["tcp_closed_peer_closed"] == 1


def test_no_binding_in_time_and_idle_past_consent_expire() -> None:
    core = make_core(first_timeout=5.0, idle_timeout=30.0)
    slow = opened(core)
    core.tcp.receive(slow, b"\x00", T0 + 4)  # a byte at a time: still no Binding
    live = opened(core)
    bind(core, live)
    assert core.tcp.expire(T0 + 5.0) == []
    assert core.tcp.expire(T0 + 5.1) == [slow]
    assert slow.closed is TcpClose.FIRST_TIMEOUT
    core.tcp.receive(live, pack_frame(DTLS), T0 + 20)
    assert core.tcp.expire(T0 + 50) == []
    assert core.tcp.expire(T0 + 50.1) == [live]
    assert live.closed is TcpClose.IDLE
    assert core.counters()["tcp_connections"] == 0
    assert not core.tcp.close(live, TcpClose.PEER_CLOSED)  # one removal, counted once
    assert core.counters()["tcp_closed_peer_closed"] == 0


# the transceiver side --------------------------------------------------------------------------


def test_transceiver_frames_for_an_alias_go_back_on_its_connection() -> None:
    core = make_core()
    conn = opened(core)
    bind(core, conn)
    frame = conn.header + b"reply"
    assert core.on_frame(XCVR_ADDR, frame, T0) == SendToTcp(conn.conn_id, len(conn.header))
    assert len(core.flows) == 0  # no UDP flow, no Redis write for an alias
    assert core.take_writes() == {}


def test_frames_for_a_closed_or_foreign_alias_are_dropped_never_learned_as_udp() -> None:
    core = make_core()
    core.set_transceivers({XCVR: XCVR_ADDR, 4: ("10.0.0.4", 7000)})
    conn = opened(core)
    bind(core, conn)
    other = core.on_frame(("10.0.0.4", 7000), conn.header + b"x", T0)
    assert isinstance(other, Drop) and other.reason is DropReason.FRAME_TCP_GONE
    core.tcp.close(conn, TcpClose.PEER_CLOSED)
    gone = core.on_frame(XCVR_ADDR, conn.header + b"x", T0)
    assert isinstance(gone, Drop) and gone.reason is DropReason.FRAME_TCP_GONE
    assert len(core.flows) == 0 and core.counters()["tcp_drop_gone"] == 2
    assert parse_header(conn.header)[0] == conn.alias


def test_a_udp_binding_from_an_alias_address_is_dropped() -> None:
    core = make_core()
    action = core.on_datagram(alias_addr(SHARD, 0, 5), binding_request(), T0)
    assert isinstance(action, Drop) and action.reason is DropReason.ALIAS_SOURCE
    udp = core.on_datagram(("192.0.2.1", 5000), binding_request(), T0)
    assert isinstance(udp, Forward)
    assert isinstance(core.on_frame(XCVR_ADDR, udp.header + b"r", T0), SendToClient)


def test_a_moved_transceiver_takes_its_connections_along() -> None:
    core = make_core()
    conn = opened(core)
    bind(core, conn)
    core.set_transceivers({XCVR: ("10.0.0.9", 7000)})
    assert core.tcp.receive(conn, pack_frame(DTLS), T0) == [
        Forward(conn.header, ("10.0.0.9", 7000), DTLS)
    ]
