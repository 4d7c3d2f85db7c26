"""A relay bound to 0.0.0.0 on a host with two addresses answers each client from the address
the client sent to (IP_PKTINFO), on both relay paths. Root only: the client lives in a network
namespace of its own (``vpk-<pid>``), linked to this host by a veth pair whose host end holds
both addresses; the relay's sockets stay in this namespace, next to Redis."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
import redis

from fleet.addresses import canonical_addr
from fleet.nodes import HEALTH_TRANSCEIVER_ID
from lab.netns import inside
from relays.daemon import Relay
from relays.framing import pack_header, parse_header
from relays.stun import parse_xor_mapped_address
from tests.relays.conftest import DTLS, binding_request
from tests.relays.test_daemon import (  # noqa: F401 (relay_path: both paths, autouse)
    addr_of,
    make_config,
    recv,
    relay_path,
    transceiver,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

_N = os.getpid() % 200 + 20
NETNS = f"vpk-{os.getpid()}"
VETH_HOST, VETH_NS = f"vpk-h{_N}", f"vpk-n{_N}"
PRIMARY, SECONDARY, CLIENT_IP = f"10.252.{_N}.1", f"10.252.{_N}.2", f"10.252.{_N}.9"


def _sh(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """The client's namespace; this host's end of the link has PRIMARY then SECONDARY."""
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        _sh("ip", "link", "set", VETH_NS, "netns", NETNS)
        _sh("ip", "addr", "add", f"{PRIMARY}/24", "dev", VETH_HOST)
        _sh("ip", "addr", "add", f"{SECONDARY}/24", "dev", VETH_HOST)  # secondary: never a source
        _sh("ip", "link", "set", VETH_HOST, "up")
        _sh("ip", "-n", NETNS, "addr", "add", f"{CLIENT_IP}/24", "dev", VETH_NS)
        _sh("ip", "-n", NETNS, "link", "set", VETH_NS, "up")
        _sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        yield NETNS
    finally:
        subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


@pytest.fixture
def ns_client(netns: str) -> Iterator[socket.socket]:
    with inside(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.closing(sock):
        sock.bind((CLIENT_IP, 0))
        sock.setblocking(False)
        yield sock


async def test_plain_wildcard_socket_answers_from_the_primary_address(
    ns_client: socket.socket, relay_path: bool  # noqa: F811
) -> None:
    """The fault the relay must avoid, shown on a bare socket: the kernel's source is PRIMARY."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as bare:
        bare.bind(("0.0.0.0", 0))
        bare.setblocking(False)
        ns_client.sendto(b"ping", (SECONDARY, bare.getsockname()[1]))
        _, source = await recv(bare)
        bare.sendto(b"pong", source)
        assert await recv(ns_client) == (b"pong", (PRIMARY, bare.getsockname()[1]))


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"], ids=["v4", "dual-stack-v6"])
async def test_wildcard_relay_answers_from_the_address_the_client_sent_to(
    redis_url: str, ns_client: socket.socket, transceiver: socket.socket,  # noqa: F811
    redis_client: redis.Redis, bind: str,
) -> None:
    """On ``[::]`` the v4 client is seen v4-mapped: IPV6_PKTINFO carries its destination."""
    async with Relay(make_config(redis_url, public=(bind, 0))) as relay:
        assert relay.fastpath is relay.config.fastpath
        port = relay.public_addr[1]
        client = canonical_addr(addr_of(ns_client), v6=bind == "::")

        ns_client.sendto(binding_request(), (SECONDARY, port))  # learns the flow
        frame, _ = await recv(transceiver)
        assert parse_header(frame) == (client, 8 if bind == "0.0.0.0" else 20)
        # The first frame confirms the flow (Python sends it), the rest go out on the C path
        # where it runs: every one from SECONDARY.
        for n in range(4):
            transceiver.sendto(pack_header(client) + b"reply%d" % n, relay.internal_addr)
            assert await recv(ns_client) == (b"reply%d" % n, (SECONDARY, port))
        ns_client.sendto(DTLS, (SECONDARY, port))
        assert (await recv(transceiver))[0] == pack_header(client) + DTLS

        # The client switches to PRIMARY: its flow follows, replies leave from there.
        ns_client.sendto(DTLS, (PRIMARY, port))
        assert (await recv(transceiver))[0] == pack_header(client) + DTLS
        for n in range(3):
            transceiver.sendto(pack_header(client) + b"back%d" % n, relay.internal_addr)
            assert await recv(ns_client) == (b"back%d" % n, (PRIMARY, port))
        ns_client.sendto(DTLS, (SECONDARY, port))
        assert (await recv(transceiver))[0] == pack_header(client) + DTLS
        transceiver.sendto(pack_header(client) + b"again", relay.internal_addr)
        assert await recv(ns_client) == (b"again", (SECONDARY, port))

        # The relay's own STUN answer (a health probe, from a source without a flow) leaves
        # from the address it was asked on.
        with inside(NETNS):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.closing(probe):
            probe.bind((CLIENT_IP, 0))
            probe.setblocking(False)
            probe.sendto(binding_request(transceiver=HEALTH_TRANSCEIVER_ID), (SECONDARY, port))
            answer, source = await recv(probe)
            assert source == (SECONDARY, port)
            mapped, mapped_port = parse_xor_mapped_address(answer)
            expected = canonical_addr(addr_of(probe), v6=bind == "::")
            assert (ip_address(mapped), mapped_port) == (ip_address(expected[0]), expected[1])
        assert relay.health_answered == 1
        assert not relay.core.drops
