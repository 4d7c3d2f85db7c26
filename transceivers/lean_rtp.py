"""The received-media hop aiortc spends per packet, taken out (``TRANSCEIVER_LEAN_RTP``).

Every datagram a session receives goes, in aiortc 1.16, from aioice's protocol (which first
tries to parse it as STUN: an exception per RTP packet) into the connection's ``asyncio.Queue``,
whose getter, the DTLS transport's reader task, wakes on the next loop iteration to unprotect
it and hand it to the RTP receiver. At 50 packets a second per call that is a future, a queue
hand-off and a task step per packet before any media work.

Once a session's DTLS transport is connected, ``attach`` gives the session's mux protocols a
``media_sink``: SRTP and SRTCP datagrams (RFC 7983: first byte 128-191) are unprotected and
handled at once, in the mux's read callback, by the same aiortc methods the reader task would
call (``_handle_rtp_data`` / ``_handle_rtcp_data``), so the receiver, its statistics and the
jitter buffer see the same packets in the same order. Those methods are coroutines that never
wait for audio (aiortc awaits only REMB, NACK and PLI sends, all video, and sends that complete
at once); ``drive`` runs one to its end and, should it ever wait, lets a task finish it. STUN and
DTLS keep aioice's path; a datagram that is neither is dropped, as aiortc drops it.

Sending, ``attach`` also gives the session's ICE transport ``direct_send``: the datagram goes to
the selected pair's protocol through one coroutine, not aioice's three.

``install`` also swaps aiortc's ``clock.current_ntp_time`` and ``clock.current_ms`` (called for
every packet sent and received) for versions on ``time.time()`` that return the same values
without building ``datetime`` objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pylibsrtp
from aiortc import clock
from aiortc.rtcdtlstransport import State
from aiortc.rtcpeerconnection import RTCPeerConnection
from aiortc.rtp import is_rtcp

from transceivers import lean_audio
from transceivers.lean_audio import AudioPath

logger = logging.getLogger(__name__)

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from the NTP epoch (1900) to the Unix epoch (1970)
_stock_ntp_time, _stock_ms = clock.current_ntp_time, clock.current_ms
# received SRTP/SRTCP datagrams this process's sinks took (authentic or not): read by the
# metrics scrape (edge_transceiver_lean_packets_total) and by tests; one int, no lock
taken = 0


def ntp_time() -> int:
    """``aiortc.clock.current_ntp_time``: 32.32 fixed-point NTP time, microsecond resolution."""
    micros = time.time_ns() // 1000
    seconds, micro = divmod(micros, 1_000_000)
    return ((seconds + NTP_UNIX_OFFSET) << 32) | (micro << 32) // 1_000_000


def ntp_ms() -> int:
    """``aiortc.clock.current_ms``: milliseconds since the NTP epoch."""
    return (time.time_ns() // 1000 + NTP_UNIX_OFFSET * 1_000_000) // 1000


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    while True:
        if waiting is None:  # a bare yield (asyncio.sleep(0))
            await asyncio.sleep(0)
        else:
            try:
                await waiting
            except BaseException:  # noqa: BLE001  the coroutine reads the outcome itself
                pass
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


def drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` now, to its end if it never waits; if it does, a task finishes it. Its
    exceptions are logged (as a task's would be), never raised to the caller."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception:
        logger.exception("handling a received packet failed")
        return
    asyncio.ensure_future(_finish(coro, waiting)).add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("handling a received packet failed", exc_info=task.exception())


def _took(take: Callable[[bytes, int], bool], packet: bytes, arrival: int) -> bool:
    """``take(packet, arrival)``; what it raises is logged (as ``drive`` logs what aiortc's
    handlers raise) and the packet counts as handled: never out of the mux's read loop."""
    try:
        return take(packet, arrival)
    except Exception:
        logger.exception("handling a received audio packet failed")
        return True


def srtp_sink(dtls: Any, audio: Sequence[AudioPath] = ()) -> Callable[[bytes], bool]:
    """What the mux calls for an RTP or RTCP datagram of the session of DTLS transport
    ``dtls``: True when handled here (or dropped as aiortc would), False to leave it to
    aioice's path (the transport is not connected any more). RTP packets one of ``audio``
    takes (``transceivers.lean_audio``, a path per audio receiver) skip aiortc's per-packet
    objects."""
    rx = dtls._rx_srtp
    handle_rtp, handle_rtcp = dtls._handle_rtp_data, dtls._handle_rtcp_data
    current_ms = clock.current_ms
    take: Callable[[bytes, int], bool] | None = None
    if len(audio) == 1:
        take = audio[0].take
    elif audio:
        def take(packet: bytes, arrival: int) -> bool:
            return any(path.take(packet, arrival) for path in audio)

    def sink(data: bytes) -> bool:
        global taken
        if dtls._state is not State.CONNECTED:
            return False
        taken += 1
        try:
            if is_rtcp(data):
                drive(handle_rtcp(rx.unprotect_rtcp(data)))
            else:
                arrival = current_ms()
                packet = rx.unprotect(data)
                if take is None or not _took(take, packet, arrival):
                    drive(handle_rtp(packet, arrival_time_ms=arrival))
        except pylibsrtp.Error:  # forged, replayed or damaged: aiortc drops it too
            pass
        return True

    return sink


def direct_send(connection: Any) -> Callable[[bytes], Coroutine[Any, Any, None]]:
    """aioice's ``Connection.send`` for ``RTCIceTransport._send``: the same datagram to the same
    selected pair (looked up per datagram: a NAT rebinding moves it), through one coroutine
    instead of aioice's three (``send``, ``sendto``, the protocol's ``send_data``)."""
    nominated = connection._nominated

    def now(data: bytes) -> None:
        pair = nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        pair.protocol.transport.sendto(data, pair.remote_addr)

    async def send(data: bytes) -> None:
        now(data)

    send.now = now  # type: ignore[attr-defined]  # the same, for a caller that need not await
    return send


def attach(pc: RTCPeerConnection) -> int:
    """Give the mux protocols under ``pc``'s (bundled, connected) transport the SRTP sink, and
    its ICE transport ``direct_send``; returns how many protocols took the sink (0 where the
    transport is not on the mux, which then keeps aiortc's paths both ways)."""
    attached = 0
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None or dtls._rx_srtp is None:
            continue
        audio = [AudioPath(t.receiver, dtls) for t in pc.getTransceivers()
                 if t.receiver.transport is dtls and AudioPath.suits(t.receiver)
                 ] if lean_audio.active() else []
        sink = srtp_sink(dtls, audio)
        connection = dtls.transport._connection
        for protocol in connection._protocols:
            if hasattr(protocol, "media_sink"):
                protocol.media_sink = sink
                attached += 1
        if attached:
            dtls.transport._send = direct_send(connection)  # type: ignore[assignment]
        break  # bundled: one transport carries every m-line
    return attached


_active = False  # set by install: sessions attach the sink


def enabled() -> bool:
    return os.environ.get("TRANSCEIVER_LEAN_RTP", "1") != "0"


def active() -> bool:
    """Whether sessions should ``attach`` (``install`` switched the lean path on)."""
    return _active


def install(on: bool | None = None) -> None:
    """Switch the lean path on (default ``TRANSCEIVER_LEAN_RTP``, on) or off: sessions attach
    the SRTP sink, and aiortc's clock runs on ``time.time()``; off restores aiortc's clock."""
    global _active
    lean = enabled() if on is None else on
    _active = lean
    clock.current_ntp_time = ntp_time if lean else _stock_ntp_time  # type: ignore[assignment]
    clock.current_ms = ntp_ms if lean else _stock_ms  # type: ignore[assignment]
