"""Scope of the aioice hook: only connections built inside ``bind_next_connection`` use the mux."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import aioice.ice
import aiortc.rtcicetransport
import pytest
from aioice import stun

from fleet.sockets import bind_udp
from transceivers import aiortc_hook as hook
from transceivers.shared_socket import CHECK_RTO, SOCKET_BUFFER, IceMux, VirtualProtocol


def test_install_swaps_the_module_global() -> None:
    hook.install()
    assert aiortc.rtcicetransport.Connection is hook.MuxConnection


async def test_outside_a_binding_the_connection_is_stock() -> None:
    connection = hook.MuxConnection(ice_controlling=False)
    assert connection._mux_binding is None
    await connection.gather_candidates()  # real sockets of its own, as aioice does
    assert connection.local_candidates
    await connection.close()


async def test_inside_a_binding_one_relay_candidate_and_no_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock = bind_udp(("127.0.0.1", 0), buffer=SOCKET_BUFFER)
    mux = IceMux(sock)
    binding = hook.MuxBinding(mux, "s1", "u" * 24, "p" * 32, ("203.0.113.5", 3478))
    with hook.bind_next_connection(binding):
        connection = hook.MuxConnection(ice_controlling=False)
        with pytest.raises(RuntimeError, match="max-bundle"):
            hook.MuxConnection(ice_controlling=False)
    assert hook.MuxConnection(ice_controlling=False)._mux_binding is None  # scope ended
    assert connection.local_username == "u" * 24 and connection.local_password == "p" * 32
    listed: list[object] = []
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **kw: listed.append(kw) or [])
    await connection.gather_candidates()
    await connection.gather_candidates()  # once only, as aioice
    assert listed == []  # the relay's address is the candidate: no interface listing
    [candidate] = connection.local_candidates
    assert (candidate.host, candidate.port, candidate.type) == ("203.0.113.5", 3478, "host")
    assert mux.has_ufrag("u" * 24)
    await connection.close()  # connection_lost arrives soon: close() does not hang
    assert not mux.has_ufrag("u" * 24)
    assert sock.fileno() >= 0 and sock.type == socket.SOCK_DGRAM  # the shared socket stays
    mux.close()


async def test_a_check_without_priority_is_learned_as_peer_reflexive() -> None:
    """RFC 8445 §7.1.1 makes PRIORITY mandatory, yet some WHIP callers omit it: stock aioice
    answers such a check and then fails on the missing attribute, never forming a pair."""
    connection = hook.MuxConnection(ice_controlling=False, components=1)
    connection.remote_username, connection.remote_password = "peer", "p" * 22
    [local] = await connection.get_component_candidates(1, ["127.0.0.1"])  # aioice skips lo
    connection._local_candidates = [local]
    connection._local_candidates_start = connection._local_candidates_end = True
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.setblocking(False)
    loop = asyncio.get_running_loop()
    connecting = asyncio.ensure_future(connection.connect())
    try:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes.update({"USERNAME": f"{connection.local_username}:peer",
                                   "ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
        request.add_message_integrity(connection.local_password.encode())
        request.add_fingerprint()
        caller.sendto(bytes(request), (local.host, local.port))
        for _ in range(4):  # our success response, then its triggered check: answer it
            message = stun.parse_message(await asyncio.wait_for(loop.sock_recv(caller, 1500), 5))
            if message.message_class == stun.Class.REQUEST:
                response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                        transaction_id=message.transaction_id)
                response.attributes["XOR-MAPPED-ADDRESS"] = (local.host, local.port)
                response.add_message_integrity(b"p" * 22)
                response.add_fingerprint()
                caller.sendto(bytes(response), (local.host, local.port))
                break
        await asyncio.wait_for(connecting, 5)
        [peer] = connection._remote_candidates
        assert (peer.type, peer.port) == ("prflx", caller.getsockname()[1])
    finally:
        connecting.cancel()
        caller.close()
        await connection.close()


class _Recorder(asyncio.DatagramTransport):
    """A transport that records when each datagram went out (the mux's socket, minus framing)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.times.append(time.monotonic())


async def _sends(retransmissions: int | None, wait: float) -> list[float]:
    protocol = VirtualProtocol(None)  # type: ignore[arg-type]  # no ICE connection needed
    transport = _Recorder()
    protocol.connection_made(transport)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    started = time.monotonic()
    task = asyncio.ensure_future(protocol.request(request, ("192.0.2.1", 9),
                                                  retransmissions=retransmissions))
    await asyncio.sleep(wait)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, stun.TransactionTimeout):
        await task
    return [t - started for t in transport.times]


async def test_a_lost_connectivity_check_is_retransmitted_after_check_rto() -> None:
    sent = await _sends(None, CHECK_RTO * 3.5)  # sends at 0, RTO, 3 RTO
    assert len(sent) == 3, sent
    assert sent[1] - sent[0] == pytest.approx(CHECK_RTO, abs=0.05)
    assert CHECK_RTO < 0.5  # aioice's own first retransmission


async def test_consent_checks_keep_aioices_timing() -> None:
    sent = await _sends(0, 0.3)  # one try, aioice's 500 ms wait for the answer
    assert len(sent) == 1
