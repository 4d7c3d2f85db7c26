"""``up``'s free-port check treats ports the way the servers bind them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from geo.topology import Topology, parse_topology
from signaling_site.management.commands.up import _check_ports_free

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "local.json"


def _time_wait_port() -> int:
    """A port whose only socket is in TIME_WAIT: the server side closed first."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        server.close()  # active close: this end goes to TIME_WAIT
        client.recv(1)
        client.close()
    return int(port)


def _topology() -> Topology:
    return parse_topology(json.loads(TOPOLOGY.read_text()))


def test_time_wait_is_not_in_use() -> None:
    port = _time_wait_port()
    with socket.socket() as plain:  # what the old check did: it fails on TIME_WAIT
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    _check_ports_free(_topology(), "127.0.0.1", port, "127.0.0.1")


def test_a_listening_port_is_in_use() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(CommandError, match="is in use"):
            _check_ports_free(_topology(), "127.0.0.1", port, "127.0.0.1")
