"""A fleet signaling can place real offers on, in the test's own loop: one region, one relay row
kept fresh by heartbeats, one real in-process aiortc transceiver answering over Channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis
from aiortc import RTCConfiguration, RTCPeerConnection
from channels import layers as channel_layers
from channels.db import database_sync_to_async

from geo.services import region_ensure_default
from relays.models import RelayShard
from tests.dashboard.fleet import beat_relay
from tests.transceivers.conftest import make_config, make_transceiver
from transceivers.daemon import Transceiver


async def browser_offer() -> str:
    """A real aiortc audio offer (sendrecv, ICE credentials, DTLS fingerprint)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


@database_sync_to_async
def _relay_row() -> None:
    region = region_ensure_default()
    RelayShard.objects.update_or_create(
        shard_id=1, defaults={"region": region, "public_host": "127.0.0.1", "public_port": 3478,
                              "internal_host": "127.0.0.1", "internal_port": 3479},
    )


async def _beat(client: redis.Redis) -> None:
    while True:
        beat_relay(client, 1)
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def live_fleet(redis_url: str, *, capacity: int = 20) -> AsyncIterator[Transceiver]:
    """Region ``local`` with relay shard 1 and transceiver 1 of ``capacity``, until exit."""
    channel_layers.channel_layers.backends = {}  # layers are loop-bound: one per test
    await _relay_row()
    client = redis.Redis.from_url(redis_url)
    beats = asyncio.ensure_future(_beat(client))
    config = make_config(redis_url, transceiver_id=1, region_code="local", capacity=capacity)
    try:
        async with make_transceiver(config) as transceiver:
            yield transceiver
    finally:
        beats.cancel()
        client.close()
