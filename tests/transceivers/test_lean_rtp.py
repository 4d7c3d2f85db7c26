"""The lean received-media path: same clock values as aiortc's, coroutines driven to their end,
and a real echo call through a running transceiver with it on and off."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest
from aiortc import clock

from relays.framing import pack_header
from tests.transceivers.conftest import (
    TONE_HZ,
    Client,
    Framer,
    make_config,
    make_transceiver,
    open_session,
)
from tests.transceivers.test_daemon import collect_echo
from transceivers import lean_audio, lean_rtp
from transceivers.lean_audio import AudioPath

pytestmark = pytest.mark.django_db(transaction=True)


def test_clock_gives_aiortcs_values() -> None:
    for _ in range(100):
        before, lean, after = lean_rtp._stock_ntp_time(), lean_rtp.ntp_time(), \
            lean_rtp._stock_ntp_time()
        assert before <= lean <= after
        before_ms, lean_ms, after_ms = lean_rtp._stock_ms(), lean_rtp.ntp_ms(), \
            lean_rtp._stock_ms()
        assert before_ms - 1 <= lean_ms <= after_ms + 1  # aiortc's float rounding


def test_install_switches_aiortcs_clock_both_ways() -> None:
    try:
        lean_rtp.install(on=True)
        assert clock.current_ntp_time is lean_rtp.ntp_time and lean_rtp.active()
        lean_rtp.install(on=False)
        assert clock.current_ntp_time is lean_rtp._stock_ntp_time and not lean_rtp.active()
        assert clock.current_ms is lean_rtp._stock_ms
    finally:
        lean_rtp.install(on=False)


async def test_drive_runs_a_coroutine_that_never_waits_to_its_end_at_once() -> None:
    done: list[int] = []

    async def inner() -> None:
        done.append(1)

    async def outer() -> None:
        await inner()
        done.append(2)

    lean_rtp.drive(outer())
    assert done == [1, 2]


async def test_drive_lets_a_task_finish_a_coroutine_that_waits() -> None:
    gate = asyncio.get_running_loop().create_future()
    done: list[object] = []

    async def waits() -> None:
        done.append(await gate)
        await asyncio.sleep(0)
        done.append("after a bare yield")

    lean_rtp.drive(waits())
    assert done == []
    gate.set_result("resumed with the result")
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == ["resumed with the result", "after a bare yield"]


async def test_drive_logs_what_a_coroutine_raises(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("broken packet handler")

    gate = asyncio.get_running_loop().create_future()

    async def fails_later() -> None:
        await gate
        raise ValueError("broken after waiting")

    with caplog.at_level(logging.ERROR, logger="transceivers.lean_rtp"):
        lean_rtp.drive(fails())
        lean_rtp.drive(fails_later())
        gate.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
    assert "broken packet handler" in caplog.text and "broken after waiting" in caplog.text


@pytest.mark.parametrize(("lean", "audio"), [("1", "1"), ("1", "0"), ("0", "0")])
async def test_echo_call_on_either_path_survives_forged_srtp(
    redis_url: str, lean: str, audio: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and with the lean audio path (transceivers.lean_audio) on top: it carries the
    call both ways, and the session's statistics count what it carried."""
    monkeypatch.setitem(os.environ, "TRANSCEIVER_LEAN_RTP", lean)
    monkeypatch.setitem(os.environ, "TRANSCEIVER_LEAN_AUDIO", audio)
    taken, lean_senders = [], []
    stock_take, stock_run = AudioPath.take, lean_audio.run_rtp

    def take(self: AudioPath, data: bytes, arrival_ms: int) -> bool:
        took = stock_take(self, data, arrival_ms)
        taken.append(took)
        return took

    async def run_rtp(sender: Any, codec: Any) -> None:
        lean_senders.append(sender)
        await stock_run(sender, codec)

    monkeypatch.setattr(AudioPath, "take", take)
    monkeypatch.setattr(lean_audio, "run_rtp", run_rtp)
    client = Client()
    try:
        async with make_transceiver(make_config(redis_url)) as transceiver, \
                Framer(transceiver.address) as framer:
            before = lean_rtp.taken
            session_id = await open_session(transceiver.config.transceiver_id, framer, client)
            await client.wait_connected()
            assert client.echo is not None
            track = await client.echo
            freqs, _ = await collect_echo(track, 1.0)
            # forged SRTP (right first byte, no valid authentication tag) from the client's
            # own address, as an attacker who knows it could send: dropped, the call goes on
            internal = framer.internal.transport
            assert internal is not None
            for i in range(200):
                internal.sendto(pack_header(client.nominated_local()) + bytes([0x80, 111])
                                + os.urandom(60 + i % 40), transceiver.address)
            started = time.monotonic()
            freqs, _ = await collect_echo(track, 1.5)
            assert time.monotonic() - started < 3.0
            assert sum(abs(f - TONE_HZ) <= 5 for f in freqs) / len(freqs) >= 0.95, freqs
            assert transceiver.sessions is not None
            session = transceiver.sessions.get(session_id)
            assert session is not None
            dtls = session.pc.getTransceivers()[0].receiver.transport
            sinks = [getattr(p, "media_sink", None) for p in dtls.transport._connection._protocols]
            direct = getattr(dtls.transport._send, "__qualname__", "").startswith("direct_send")
            if lean == "1":
                assert all(sinks) and lean_rtp.taken - before >= 100 + 200 and direct
            else:
                assert not any(sinks) and lean_rtp.taken == before and not direct
            if audio == "1":
                assert sum(taken) >= 100 and session.pc.getSenders()[0] in lean_senders
            else:
                assert not taken and not lean_senders
            stats = await session.pc.getStats()
            kinds = {s.type: s for s in stats.values()}
            assert kinds["inbound-rtp"].packetsReceived >= 100
            assert kinds["outbound-rtp"].packetsSent >= 100
            assert kinds["outbound-rtp"].bytesSent > 100 * 20
            assert kinds["transport"].packetsSent >= kinds["outbound-rtp"].packetsSent
    finally:
        await client.pc.close()
        lean_rtp.install(on=False)
        lean_audio.install(on=False)
