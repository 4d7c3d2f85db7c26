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

from fleet.addresses import format_addr
from fleet.heartbeats import TransceiverHeartbeat
from fleet.keys import (
    TRANSCEIVERS_KEY,
    control_queue_key,
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
    make_transceiver,
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


def _fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:"))


async def test_sessions_share_the_transceivers_certificate_and_each_connects(
    transceiver: Transceiver,
) -> None:
    """One DTLS certificate for the process (``transceivers.dtls``): two calls at once both
    connect and echo; their answers carry the same fingerprint, the clients' offers their own."""
    clients = [Client(), Client()]
    async with Framer(transceiver.address) as framer:
        for client in clients:
            await open_session(transceiver.config.transceiver_id, framer, client)
        for client in clients:
            await client.wait_connected()
            assert client.echo is not None
            freqs, _ = await collect_echo(await client.echo, 1.0)
            assert sum(abs(f - TONE_HZ) <= 5 for f in freqs) / len(freqs) >= 0.95
        answers = {_fingerprint(c.pc.remoteDescription.sdp) for c in clients}
        offers = {_fingerprint(c.pc.localDescription.sdp) for c in clients}
        assert len(answers) == 1 and len(offers) == 2 and not answers & offers
        for client in clients:
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


async def test_garbage_on_the_control_queue_is_dropped(transceiver: Transceiver,
                                                       redis_url: str) -> None:
    """Whatever lands on the queue (not JSON, not an object, an unknown type, an offer missing
    fields) is logged and dropped; the next request is served."""
    client = redis.Redis.from_url(redis_url)
    key = control_queue_key(transceiver.config.transceiver_id)
    client.lpush(key, b"\xff not json", b"[1, 2]", b'{"type": "reboot"}',
                 b'{"type": "session.offer", "session_id": "x"}')
    status = await control.request_ping(transceiver_id=transceiver.config.transceiver_id, timeout=5)
    assert status["sessions"] == 0
    assert client.llen(key) == 0
    client.close()


async def test_a_full_control_queue_refuses_at_once(redis_url: str) -> None:
    """A transceiver that stopped popping: once its queue holds QUEUE_CAPACITY requests, the
    next message (a close: no reply) is refused ``full`` and not queued, as a request is
    (below); the queue expires by itself."""
    client = redis.Redis.from_url(redis_url)
    key = control_queue_key(999_998)
    client.lpush(key, *[b"{}"] * (control.QUEUE_CAPACITY - 1))
    await control.request_close(transceiver_id=999_998, session_id=str(uuid.uuid4()))
    assert client.llen(key) == control.QUEUE_CAPACITY  # the last place taken
    with pytest.raises(control.ControlError, match="full"):
        await control.request_close(transceiver_id=999_998, session_id=str(uuid.uuid4()))
    assert client.llen(key) == control.QUEUE_CAPACITY
    assert 0 < client.ttl(key) <= control.QUEUE_TTL
    client.delete(key)
    client.close()


async def test_a_full_control_queue_refuses_a_request_at_once_without_queueing_it(
        redis_url: str) -> None:
    """A request that waits for its reply (offers, pings) against a full queue: refused ``full``
    at once, through its own reply list, and the queue does not grow."""
    client = redis.Redis.from_url(redis_url)
    key = control_queue_key(999_997)
    client.lpush(key, *[b"{}"] * control.QUEUE_CAPACITY)
    started = time.monotonic()
    with pytest.raises(control.ControlError, match="full"):
        await control.request_ping(transceiver_id=999_997, timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert client.llen(key) == control.QUEUE_CAPACITY
    client.delete(key)
    client.close()


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
    async with make_transceiver(make_config(redis_url, capacity=0)) as full:
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
    async with make_transceiver(make_config(redis_url, connect_timeout=1.0)) as transceiver:
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
    async with make_transceiver(config) as transceiver, Framer(transceiver.address) as framer:
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
    from fleet.keys import drain_key
    from tests.e2e.conftest import free_port

    admin = free_port(socket.SOCK_STREAM)
    config = make_config(redis_url, admin=("127.0.0.1", admin), connect_timeout=30.0)
    client = redis.Redis.from_url(redis_url)
    async with make_transceiver(config) as transceiver:
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
    async with make_transceiver(make_config(redis_url, drain_grace=0.3)) as transceiver:
        assert transceiver.sessions is not None
        transceiver.drain("SIGTERM")
        await asyncio.wait_for(transceiver.drained.wait(), 5)  # no sessions: at once
    async with make_transceiver(make_config(redis_url)) as transceiver:
        transceiver.drain("requested by operator")
        transceiver.resume()
        assert transceiver.ready() and not transceiver.drained.is_set()


async def test_an_emptied_redis_gets_back_what_the_transceiver_owns(redis_url: str) -> None:
    """Redis restarted without its data: the registry entry, heartbeat and held session ids are
    re-asserted with the next heartbeat (relays accept frames only from registered
    transceivers, so a lost registry entry would silently break every call)."""
    from fleet.keys import transceiver_sessions_key

    client = redis.Redis.from_url(redis_url)
    config = make_config(redis_url, heartbeat_interval=0.2)
    async with make_transceiver(config) as transceiver:
        session_id = str(uuid.uuid4())
        ufrag, pwd = credentials()
        offerer = Client()
        await control.request_answer(
            transceiver_id=config.transceiver_id, session_id=session_id,
            offer_sdp=await offerer.offer(), ufrag=ufrag, pwd=pwd,
            relay_public=("127.0.0.1", 9), timeout=5,
        )
        client.flushdb()
        flushed = time.monotonic()
        key = str(config.transceiver_id).encode()
        async with asyncio.timeout(5):
            while client.hget(TRANSCEIVERS_KEY, key) is None:
                await asyncio.sleep(0.02)
        took = time.monotonic() - flushed
        logger.info("registry entry back %.2f s after FLUSHDB", took)
        assert took < 3 * config.heartbeat_interval
        assert client.hget(TRANSCEIVERS_KEY, key) == format_addr(transceiver.address).encode()
        assert client.exists(transceiver_heartbeat_key(config.transceiver_id))
        assert client.smembers(transceiver_sessions_key(config.transceiver_id)) == {
            session_id.encode()}
        await offerer.pc.close()
    client.close()


async def _http_body(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body.strip()


async def test_not_ready_while_redis_is_unreachable_but_alive(tmp_path: object) -> None:
    """Readiness (take traffic?) follows Redis; liveness (restart me?) does not: restarting a
    transceiver because Redis is away would only kill its calls."""
    from pathlib import Path

    from signaling_site.redis_server import start_embedded_redis
    from tests.e2e.conftest import free_port

    workdir = Path(str(tmp_path))
    own_redis, url = start_embedded_redis(workdir / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    admin = free_port(socket.SOCK_STREAM)
    config = make_config(url, admin=("127.0.0.1", admin), heartbeat_interval=0.1)
    try:
        async with make_transceiver(config):
            assert await _http_body(admin, "/readyz") == (200, "ready")
            own_redis.kill()
            own_redis.wait(10)
            killed = time.monotonic()
            async with asyncio.timeout(5):
                while (await _http_body(admin, "/readyz"))[0] == 200:
                    await asyncio.sleep(0.05)
            logger.info("not ready %.2f s after Redis died", time.monotonic() - killed)
            status, body = await _http_body(admin, "/readyz")
            assert status == 503 and "redis" in body, body
            assert await _http_body(admin, "/livez") == (200, "ok")
            own_redis, _ = start_embedded_redis(workdir / "redis-again", port=port)
            async with asyncio.timeout(5):
                while (await _http_body(admin, "/readyz"))[0] != 200:
                    await asyncio.sleep(0.05)
    finally:
        own_redis.kill()
        own_redis.wait(10)
