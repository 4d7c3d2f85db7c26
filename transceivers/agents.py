"""Voice agents: what a session does with the client's audio. The default echoes it back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiortc.mediastreams import MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from transceivers.control import SessionEvent


class VoiceAgent(Protocol):
    """One per session: audio frames in (a track), audio frames out (a track), events."""

    def attach(self, inbound: MediaStreamTrack) -> MediaStreamTrack:
        """Take the client's audio track; return the track the client hears."""
        ...

    def on_event(self, event: SessionEvent) -> None:
        """Session lifecycle (connected, closed, ...); must not block."""
        ...

    async def close(self) -> None: ...


AgentFactory = Callable[[str], VoiceAgent]  # session_id -> agent


class EchoTrack(MediaStreamTrack):
    """Re-emits each received frame as soon as it is decoded: no extra buffering."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> Frame | Packet:
        return await self._source.recv()


class EchoAgent:
    """What the client says comes back."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._track: EchoTrack | None = None

    def attach(self, inbound: MediaStreamTrack) -> MediaStreamTrack:
        self._track = EchoTrack(inbound)
        return self._track

    def on_event(self, event: SessionEvent) -> None:
        return None

    async def close(self) -> None:
        if self._track is not None:
            self._track.stop()
