"""Routing decisions of the single-socket ICE demux (pure: datagrams in, session keys out)."""

from __future__ import annotations

import pytest
from aioice import stun

from transceivers.mux import DropReason, MuxTable

CLIENT = ("192.0.2.10", 50000)
OTHER_CLIENT = ("198.51.100.7", 40000)
RELAY = ("10.0.0.1", 3478)
RELAY_2 = ("10.0.0.2", 3478)
DTLS = b"\x16\xfe\xfd" + b"\x00" * 20
PWD = "x" * 22


def binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.add_message_integrity(PWD.encode())
    return bytes(message)


def table() -> MuxTable[str]:
    mux: MuxTable[str] = MuxTable()
    mux.add("s1", "ufragOne", PWD)
    mux.add("s2", "ufragTwo", PWD)
    return mux


def test_stun_with_live_ufrag_binds_the_address() -> None:
    mux = table()
    assert mux.route(CLIENT, RELAY, binding_request("ufragTwo:clientUfrag")) == "s2"
    assert mux.addresses("s2") == {CLIENT}
    assert mux.route(CLIENT, RELAY, DTLS) == "s2"  # known address: no parsing
    assert mux.relay_for(CLIENT) == RELAY


def test_unknown_address_non_stun_is_dropped() -> None:
    mux = table()
    assert mux.route(CLIENT, RELAY, DTLS) is None
    assert mux.drops[DropReason.UNKNOWN_ADDRESS] == 1


def test_unknown_ufrag_is_dropped() -> None:
    mux = table()
    assert mux.route(CLIENT, RELAY, binding_request("nope:clientUfrag")) is None
    assert mux.drops[DropReason.UNKNOWN_UFRAG] == 1
    assert mux.addresses("s1") == frozenset()


def test_client_ufrag_half_does_not_route() -> None:
    mux = table()
    assert mux.route(CLIENT, RELAY, binding_request("clientUfrag:ufragOne")) is None


def test_stun_without_username_is_dropped() -> None:
    mux = table()
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert mux.route(CLIENT, RELAY, bytes(message)) is None
    assert mux.drops[DropReason.BAD_STUN] == 1


def test_replies_follow_the_relay_that_last_forwarded() -> None:
    mux = table()
    mux.route(CLIENT, RELAY, binding_request("ufragOne:c"))
    mux.route(CLIENT, RELAY_2, DTLS)  # e.g. a restarted relay on another address
    assert mux.relay_for(CLIENT) == RELAY_2


def test_unknown_client_has_no_relay() -> None:
    mux = table()
    assert mux.relay_for(OTHER_CLIENT) is None
    assert mux.drops[DropReason.NO_RELAY] == 1


def test_remove_drops_every_key_of_the_session() -> None:
    mux = table()
    mux.route(CLIENT, RELAY, binding_request("ufragOne:c"))
    mux.route(OTHER_CLIENT, RELAY, binding_request("ufragOne:c"))
    mux.remove("s1")
    assert "s1" not in mux and not mux.has_ufrag("ufragOne")
    assert mux.route(CLIENT, RELAY, DTLS) is None
    assert mux.relay_for(OTHER_CLIENT) is None
    assert mux.has_ufrag("ufragTwo")


def test_remove_keeps_a_ufrag_now_owned_by_another_session() -> None:
    mux: MuxTable[str] = MuxTable()
    mux.add("old", "shared", PWD)
    mux._by_ufrag["shared"] = "new"  # reassigned while "old" was closing
    mux.remove("old")
    assert mux.has_ufrag("shared")


def test_duplicate_ufrag_or_session_is_refused() -> None:
    mux = table()
    with pytest.raises(ValueError, match="ufrag in use"):
        mux.add("s3", "ufragOne", PWD)
    with pytest.raises(ValueError, match="session exists"):
        mux.add("s1", "fresh", PWD)


def test_bad_frames_are_counted() -> None:
    mux = table()
    mux.count_bad_frame()
    assert mux.drops[DropReason.BAD_FRAME] == 1


def test_a_live_ufrag_without_the_sessions_signature_binds_nothing() -> None:
    """A forged or replayed check (wrong password, or MESSAGE-INTEGRITY stripped) from a new
    source is dropped: only what the session's peer signed learns an address."""
    mux = table()
    forged = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    forged.attributes["USERNAME"] = "ufragOne:attacker"
    forged.add_message_integrity(b"not-the-password")
    unsigned = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    unsigned.attributes["USERNAME"] = "ufragOne:attacker"
    assert mux.route(CLIENT, RELAY, bytes(forged)) is None
    assert mux.route(OTHER_CLIENT, RELAY, bytes(unsigned)) is None
    assert mux.drops[DropReason.BAD_INTEGRITY] == 2
    assert mux.addresses("s1") == frozenset()
    assert mux.route(CLIENT, RELAY, binding_request("ufragOne:client")) == "s1"
