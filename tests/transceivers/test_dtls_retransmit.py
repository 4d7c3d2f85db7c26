"""DTLS handshake flights resent on a short timer (``transceivers.dtls``): the pure flight log,
and two real aiortc peers over loopback UDP with a socket-level dropper between them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiortc.rtcpeerconnection
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport

from bench.lossy import LossyLink, is_dtls, point_candidates
from transceivers import aiortc_hook
from transceivers.dtls import (
    DEFAULT_RETRANSMIT,
    FastRetransmitDtlsTransport,
    FlightLog,
    RetransmitPolicy,
)
from transceivers.sdp import answer_candidates


def test_policy_doubles_up_to_its_cap() -> None:
    policy = RetransmitPolicy(initial=0.1, cap=0.5)
    assert [policy.delay(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay(10_000) == 0.5


def test_flight_log_groups_datagrams_between_receptions() -> None:
    log = FlightLog()
    assert log.sent(b"hello") is True  # the first flight has no trigger
    assert log.flight == [b"hello"] and log.trigger is None
    assert log.received(b"server-1") is False
    assert log.received(b"server-2") is False
    assert log.sent(b"cert") is True and log.sent(b"finished") is False
    assert log.flight == [b"cert", b"finished"] and log.trigger == b"server-2"


def test_flight_log_spots_the_peer_repeating_what_our_flight_answered() -> None:
    log = FlightLog()
    log.received(b"client-finished")
    log.sent(b"server-finished")
    assert log.received(b"client-finished") is True  # the peer lost our flight
    assert log.received(b"client-part-1") is False  # a repeated multi-datagram flight:
    assert log.received(b"client-finished") is True  # its last datagram still counts
    log.sent(b"next-flight")
    assert log.received(b"client-finished") is False  # our new flight answered another


def test_flight_log_openssl_retransmission_replaces_the_flight() -> None:
    log = FlightLog()
    log.received(b"peer")
    log.sent(b"first-copy")
    log.retransmitting()
    assert log.sent(b"openssl-copy") is True
    assert log.flight == [b"openssl-copy"] and log.trigger == b"peer"


def drop_first_dtls_from_answerer() -> Callable[[str, bytes], bool]:
    """Drop the answerer's first DTLS datagram (its first handshake flight), nothing else."""
    state = {"dropped": False}

    def drop(direction: str, datagram: bytes) -> bool:
        if direction == "down" and is_dtls(datagram) and not state["dropped"]:
            state["dropped"] = True
            return True
        return False
    return drop


async def connect_through_dropper(policy: RetransmitPolicy | None) -> tuple[float, LossyLink]:
    """Offerer (stock aiortc DTLS) -> dropper -> answerer (our DTLS transport under ``policy``);
    seconds from applying the answer to the offerer's DTLS being connected."""
    aiortc_hook.install(policy)
    module = aiortc.rtcpeerconnection
    module.RTCDtlsTransport = RTCDtlsTransport  # type: ignore[misc]
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    offerer.addTransceiver("audio", direction="sendrecv")
    module.RTCDtlsTransport = FastRetransmitDtlsTransport  # type: ignore[misc]
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.get_running_loop().create_future()

    def on_state() -> None:
        if offerer.connectionState == "connected" and not connected.done():
            connected.set_result(time.monotonic())
    offerer.on("connectionstatechange", on_state)
    link = await LossyLink(("127.0.0.1", 9), drop_first_dtls_from_answerer()).start()
    try:
        await offerer.setLocalDescription(await offerer.createOffer())
        # Each side sees only the link (the answerer would otherwise check the offerer directly).
        offer = offerer.localDescription.sdp
        link.client = next(c for c in answer_candidates(offer) if ":" not in c[0])
        offer = point_candidates(offer, link.far)
        await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = answerer.localDescription.sdp
        link.target = next(c for c in answer_candidates(answer) if ":" not in c[0])
        started = time.monotonic()
        await offerer.setRemoteDescription(
            RTCSessionDescription(point_candidates(answer, link.near), "answer"))
        return await asyncio.wait_for(connected, 5) - started, link
    finally:
        await offerer.close()
        await answerer.close()
        link.close()
        aiortc_hook.install()


async def test_a_lost_first_flight_is_resent_within_the_short_timer() -> None:
    seconds, link = await connect_through_dropper(DEFAULT_RETRANSMIT)
    assert link.dropped["down"] == 1
    assert seconds < 0.5, f"DTLS connected {seconds * 1000:.0f} ms after the answer"


async def test_without_it_the_same_loss_costs_openssls_second() -> None:
    """The control: the dropper really drops a flight that only the timer recovers."""
    seconds, link = await connect_through_dropper(None)
    assert link.dropped["down"] == 1
    assert seconds >= 0.9, f"DTLS connected {seconds * 1000:.0f} ms after the answer"
