"""A running transceiver with a real aiortc client through a framing stand-in for the relay."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import pytest
import redis
from aiortc.mediastreams import MediaStreamTrack
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from relays.registry import (
    TRANSCEIVERS_KEY,
    TransceiverHeartbeat,
    format_addr,
    session_group,
    transceiver_heartbeat_key,
)
from tests.transceivers.conftest import (
    TONE_HZ,
    Client,
    Framer,
    credentials,
    dominant_frequency,
    make_config,
    open_session,
)
from transceivers import control
from transceivers.daemon import Transceiver

ECHO_SECONDS = 3.0
logger = logging.getLogger(__name__)

# The default reporter writes through calls.services: every test may touch the DB from threads.
pytestmark = pytest.mark.django_db(transaction=True)


async def collect_echo(track: MediaStreamTrack, seconds: float) -> tuple[list[float], float]:
    """Dominant frequency of every echoed frame for ``seconds``; and when the first came."""
    first = await asyncio.wait_for(track.recv(), 10.0)
    first_at = time.monotonic()
    freqs = [dominant_frequency(first)]
    while time.monotonic() - first_at < seconds:
        freqs.append(dominant_frequency(await asyncio.wait_for(track.recv(), 2.0)))
    return freqs, first_at


def remote_address_seen(transceiver: Transceiver, session_id: str) -> tuple[str, int]:
    assert transceiver.sessions is not None
    session = transceiver.sessions.get(session_id)
    assert session is not None
    connection = session.pc.getTransceivers()[0].receiver.transport.transport._connection
    candidate = connection._nominated[1].remote_candidate
    return candidate.host, candidate.port


async def test_echo_comes_back_at_440_hz(transceiver: Transceiver) -> None:
    client = Client()
    async with Framer(transceiver.address) as framer:
        session_id = await open_session(transceiver.config.transceiver_id, framer, client)
        await client.wait_connected()
        assert client.echo is not None
        freqs, first_at = await collect_echo(await client.echo, ECHO_SECONDS)
        assert client.tone.first_sent_at is not None
        assert first_at - client.tone.first_sent_at < 1.0
        good = sum(abs(f - TONE_HZ) <= 5 for f in freqs)
        logger.info(
            "echo: %d/%d frames at 440 Hz, first echo %.0f ms after the first tone frame",
            good, len(freqs), (first_at - client.tone.first_sent_at) * 1000,
        )
        assert len(freqs) >= ECHO_SECONDS * 40  # ~50 frames a second
        assert good / len(freqs) >= 0.95, freqs

        # The transceiver sees the client's real address (the framer's recvfrom source).
        assert remote_address_seen(transceiver, session_id) == client.nominated_local()
        assert framer.clients == {client.nominated_local()}
        await client.pc.close()


async def test_registry_and_heartbeat(transceiver: Transceiver, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = str(transceiver.config.transceiver_id).encode()
    assert client.hget(TRANSCEIVERS_KEY, key) == format_addr(transceiver.address).encode()
    await asyncio.sleep(0.5)
    beat = TransceiverHeartbeat.from_json(
        client.get(transceiver_heartbeat_key(transceiver.config.transceiver_id)) or b"{}"
    )
    assert beat.bind == format_addr(transceiver.address) and beat.sessions == 0
    assert beat.loop_lag_ms < 200 and not beat.draining
    await transceiver.close()
    assert client.hget(TRANSCEIVERS_KEY, key) is None
    assert client.get(transceiver_heartbeat_key(transceiver.config.transceiver_id)) is None
    client.close()


async def test_ping_over_redis(transceiver: Transceiver) -> None:
    status = await control.request_ping(transceiver_id=transceiver.config.transceiver_id, timeout=5)
    assert status["sessions"] == 0 and status["capacity"] == transceiver.config.capacity
    assert status["draining"] is False and status["loop_lag_ms"] >= 0


async def test_no_daemon_times_out(redis_url: str) -> None:
    with pytest.raises(control.ControlTimeout):
        await control.request_ping(transceiver_id=999_999, timeout=0.3)


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda sdp: "not sdp", "bad_sdp"),
        (lambda sdp: sdp.replace("m=audio", "m=video"), "no_audio"),
        (lambda sdp: "\r\n".join(x for x in sdp.splitlines() if "ice-pwd" not in x), "bad_sdp"),
    ],
)
async def test_refused_offers(transceiver: Transceiver, mangle: object, code: str) -> None:
    client = Client()
    offer = await client.offer()
    ufrag, pwd = credentials()
    with pytest.raises(control.ControlError) as refused:
        await control.request_answer(
            transceiver_id=transceiver.config.transceiver_id, session_id=str(uuid.uuid4()),
            offer_sdp=mangle(offer), ufrag=ufrag, pwd=pwd,  # type: ignore[operator]
            relay_public=("127.0.0.1", 9), timeout=5,
        )
    assert refused.value.code == code
    assert transceiver.sessions is not None and len(transceiver.sessions) == 0
    assert not transceiver.mux.table.has_ufrag(ufrag)  # type: ignore[union-attr]
    await client.pc.close()


async def test_full_and_draining(redis_url: str) -> None:
    async with Transceiver(make_config(redis_url, capacity=0)) as full:
        client = Client()
        offer = await client.offer()
        ufrag, pwd = credentials()
        kwargs = {
            "transceiver_id": full.config.transceiver_id, "session_id": str(uuid.uuid4()),
            "offer_sdp": offer, "ufrag": ufrag, "pwd": pwd, "relay_public": ("127.0.0.1", 9),
            "timeout": 5.0,
        }
        with pytest.raises(control.ControlError, match="full"):
            await control.request_answer(**kwargs)  # type: ignore[arg-type]
        assert full.sessions is not None
        full.sessions.draining = True
        with pytest.raises(control.ControlError, match="draining"):
            await control.request_answer(**kwargs)  # type: ignore[arg-type]
        await client.pc.close()


async def test_session_that_never_connects_is_closed(redis_url: str) -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with Transceiver(make_config(redis_url, connect_timeout=1.0)) as transceiver:
        session_id = str(uuid.uuid4())
        events = await layer.new_channel()
        await layer.group_add(session_group(session_id), events)
        client = Client()
        ufrag, pwd = credentials()
        answer = await control.request_answer(
            transceiver_id=transceiver.config.transceiver_id, session_id=session_id,
            offer_sdp=await client.offer(), ufrag=ufrag, pwd=pwd,
            relay_public=("127.0.0.1", 9), timeout=5,
        )
        assert f"a=ice-ufrag:{ufrag}" in answer and "127.0.0.1 9 typ host" in answer
        assert transceiver.sessions is not None and len(transceiver.sessions) == 1
        states = []
        async with asyncio.timeout(5):
            while "failed" not in states:
                event = control.SessionEvent.parse(await layer.receive(events))
                assert event.session_id == session_id
                states.append(event.state)
        assert states == ["answered", "checking", "failed"]
        assert len(transceiver.sessions) == 0
        assert not transceiver.mux.table.has_ufrag(ufrag)  # type: ignore[union-attr]
        await client.pc.close()


async def test_lifecycle_reaches_the_session_row(redis_url: str) -> None:
    from calls.models import Session, SessionState
    from geo.services import region_upsert
    from relays.models import RelayShard

    region = await sync_to_async(region_upsert)(code="xx", name="X", latitude=0, longitude=0)
    config = make_config(redis_url, region_code="xx")
    async with Transceiver(config) as transceiver, Framer(transceiver.address) as framer:
        host, port = framer.public_addr
        relay = await RelayShard.objects.acreate(
            shard_id=1, region=region, public_host=host, public_port=port,
            internal_host=host, internal_port=port,
        )
        row = await Session.objects.acreate(
            region=region, relay=relay, ufrag=credentials()[0],
            transceiver=await transceiver_row(config.transceiver_id),
        )
        client = Client()
        await open_session(config.transceiver_id, framer, client, str(row.id), row.ufrag)
        await client.wait_connected()
        assert await poll_state(row.id) == SessionState.CONNECTED
        await control.request_close(transceiver_id=config.transceiver_id, session_id=str(row.id))
        assert await poll_state(row.id, until=SessionState.ENDED) == SessionState.ENDED
        await client.pc.close()


async def transceiver_row(transceiver_id: int) -> object:
    from transceivers.models import Transceiver as Row

    row = await Row.objects.aget(transceiver_id=transceiver_id)
    assert row.bind_port != 0  # the real port, known only after binding
    return row


async def poll_state(session_id: object, until: str = "connected") -> str:
    from calls.models import Session

    async with asyncio.timeout(5):
        while True:
            state = (await Session.objects.aget(id=session_id)).state
            if state == until:
                return str(state)
            await asyncio.sleep(0.05)


async def _http_get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def test_drain_key_stops_new_sessions_waits_for_live_ones_then_drained(
    redis_url: str,
) -> None:
    from relays.registry import drain_key
    from tests.e2e.conftest import free_port

    admin = free_port(socket.SOCK_STREAM)
    config = make_config(redis_url, admin=("127.0.0.1", admin), connect_timeout=30.0)
    client = redis.Redis.from_url(redis_url)
    async with Transceiver(config) as transceiver:
        assert await _http_get(admin, "/readyz") == 200
        session_id = str(uuid.uuid4())
        ufrag, pwd = credentials()
        await control.request_answer(
            transceiver_id=config.transceiver_id, session_id=session_id,
            offer_sdp=await Client().offer(), ufrag=ufrag, pwd=pwd,
            relay_public=("127.0.0.1", 9), timeout=5,
        )
        client.set(drain_key("transceiver", config.transceiver_id), "test")
        async with asyncio.timeout(5):
            while transceiver.ready():
                await asyncio.sleep(0.05)
        assert await _http_get(admin, "/readyz") == 503
        assert await _http_get(admin, "/livez") == 200
        status = await control.request_ping(transceiver_id=config.transceiver_id, timeout=5)
        assert status["draining"] is True and status["sessions"] == 1
        await asyncio.sleep(0.5)
        assert not transceiver.drained.is_set()  # the live session still runs
        assert transceiver.sessions is not None
        await transceiver.sessions.close(session_id, reason="call over")
        await asyncio.wait_for(transceiver.drained.wait(), 5)
    assert client.exists(drain_key("transceiver", config.transceiver_id)) == 0
    client.close()


async def test_drain_without_sessions_is_immediate_and_resume_cancels(redis_url: str) -> None:
    async with Transceiver(make_config(redis_url, drain_grace=0.3)) as transceiver:
        assert transceiver.sessions is not None
        transceiver.drain("SIGTERM")
        await asyncio.wait_for(transceiver.drained.wait(), 5)  # no sessions: at once
    async with Transceiver(make_config(redis_url)) as transceiver:
        transceiver.drain("requested by operator")
        transceiver.resume()
        assert transceiver.ready() and not transceiver.drained.is_set()
