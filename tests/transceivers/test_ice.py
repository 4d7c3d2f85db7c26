"""Scope of the aioice hook: only connections built inside ``bind_next_connection`` use the mux."""

from __future__ import annotations

import socket

import aiortc.rtcicetransport
import pytest

from transceivers import ice


def test_install_swaps_the_module_global() -> None:
    ice.install()
    assert aiortc.rtcicetransport.Connection is ice.MuxConnection


async def test_outside_a_binding_the_connection_is_stock() -> None:
    connection = ice.MuxConnection(ice_controlling=False)
    assert connection._mux_binding is None
    await connection.gather_candidates()  # real sockets of its own, as aioice does
    assert connection.local_candidates
    await connection.close()


async def test_inside_a_binding_one_relay_candidate_and_no_socket() -> None:
    sock = ice.bind_udp("127.0.0.1", 0)
    mux = ice.IceMux(sock)
    binding = ice.MuxBinding(mux, "s1", "u" * 24, "p" * 32, ("203.0.113.5", 3478))
    with ice.bind_next_connection(binding):
        connection = ice.MuxConnection(ice_controlling=False)
        with pytest.raises(RuntimeError, match="max-bundle"):
            ice.MuxConnection(ice_controlling=False)
    assert ice.MuxConnection(ice_controlling=False)._mux_binding is None  # scope ended
    assert connection.local_username == "u" * 24 and connection.local_password == "p" * 32
    await connection.gather_candidates()
    [candidate] = connection.local_candidates
    assert (candidate.host, candidate.port, candidate.type) == ("203.0.113.5", 3478, "host")
    assert mux.has_ufrag("u" * 24)
    await connection.close()  # connection_lost arrives soon: close() does not hang
    assert not mux.has_ufrag("u" * 24)
    assert sock.fileno() >= 0 and sock.type == socket.SOCK_DGRAM  # the shared socket stays
    mux.close()
