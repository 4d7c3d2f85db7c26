"""The voice-agent seam: a non-echo agent's audio is what the client hears, and it gets events."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame

from tests.transceivers.conftest import (
    Client,
    Framer,
    dominant_frequency,
    make_config,
    make_transceiver,
    open_session,
)
from transceivers.control import EventState, SessionEvent

pytestmark = pytest.mark.django_db(transaction=True)
AGENT_HZ = 880


class AgentVoice(MediaStreamTrack):
    """The agent "speaks" an 880 Hz tone while it consumes the caller's audio."""

    kind = "audio"

    def __init__(self, inbound: MediaStreamTrack) -> None:
        super().__init__()
        self._inbound, self._pts, self.heard = inbound, 0, 0

    async def recv(self) -> AudioFrame:
        await self._inbound.recv()  # paced by the caller's audio, as a real agent would be
        self.heard += 1
        t = (self._pts + np.arange(960)) / 48_000
        samples = (0.3 * 32767 * np.sin(2 * np.pi * AGENT_HZ * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, self._pts
        frame.time_base = fractions.Fraction(1, 48_000)
        self._pts += 960
        return frame


class ToneAgent:
    agents: list[ToneAgent] = []

    def __init__(self, session_id: str) -> None:
        self.session_id, self.events, self.voice = session_id, [], None
        self.closed = False
        ToneAgent.agents.append(self)

    def attach(self, inbound: MediaStreamTrack) -> MediaStreamTrack:
        self.voice = AgentVoice(inbound)
        return self.voice

    def on_event(self, event: SessionEvent) -> None:
        self.events.append(event.state)

    async def close(self) -> None:
        self.closed = True


async def test_a_custom_agent_speaks_and_sees_the_session(redis_url: str) -> None:
    ToneAgent.agents.clear()
    async with make_transceiver(make_config(redis_url), agent_factory=ToneAgent) as transceiver:
        client = Client()
        async with Framer(transceiver.address) as framer:
            session_id = await open_session(transceiver.config.transceiver_id, framer, client)
            await client.wait_connected()
            assert client.echo is not None
            track = await client.echo
            frames = [await asyncio.wait_for(track.recv(), 10) for _ in range(50)]
            freqs = [dominant_frequency(frame) for frame in frames]
            assert sum(abs(f - AGENT_HZ) <= 5 for f in freqs) >= 45, freqs
            await client.pc.close()
            await asyncio.sleep(0.5)
    [agent] = ToneAgent.agents
    assert agent.session_id == session_id
    assert agent.voice is not None and agent.voice.heard >= 50
    assert EventState.CONNECTED in agent.events and agent.closed
