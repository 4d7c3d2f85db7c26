"""Session lifecycle on a transceiver: offer -> answer on the mux, connect timeout, close.

One ``LiveSession`` record per session; its keys (ufrag, learned client addresses) live in the
mux table. ``SessionManager._remove`` is the one place that removes a session and all its keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aioice.ice import validate_password, validate_username
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import SessionDescription

from relays.framing import Addr
from transceivers.agents import AgentFactory, VoiceAgent
from transceivers.control import ControlError, EventState, SessionEvent
from transceivers.ice import IceMux, MuxBinding, bind_next_connection
from transceivers.jitter import tune_audio_receiver
from transceivers.reporting import EventSink, SessionReporter

logger = logging.getLogger(__name__)

_DROPPED_ATTRS = ("a=candidate", "a=end-of-candidates")


def strip_candidates(sdp: str) -> str:
    """Drop ``a=candidate`` and ``a=end-of-candidates`` lines (RFC 8839 section 5.1, 5.2).

    Client candidates would make aioice open sockets (mDNS) or prune every component; the
    transceiver learns the client's address from its first STUN request (peer-reflexive).
    """
    lines = sdp.splitlines()
    kept = [line for line in lines if not line.startswith(_DROPPED_ATTRS)]
    return "\r\n".join(kept) + "\r\n"


def parse_offer(sdp: str) -> SessionDescription:
    """Parse an offer; ``ValueError("bad sdp")`` if unparsable, ``("no audio")`` without audio."""
    if not sdp.startswith("v=0"):
        raise ValueError("bad sdp")
    try:
        description = SessionDescription.parse(sdp)  # asserts and indexes on bad input
    except (AssertionError, AttributeError, IndexError, KeyError, TypeError, ValueError):
        raise ValueError("bad sdp") from None
    if not any(m.kind == "audio" and m.port != 0 for m in description.media):
        raise ValueError("no audio")
    return description


def answer_candidates(sdp: str) -> list[Addr]:
    """Return the (address, port) of every ``a=candidate`` line (RFC 8839 section 5.1)."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 6:
                raise ValueError("bad candidate")
            found.append((parts[4], int(parts[5])))
    return found


def is_relay_only_answer(sdp: str, public: Addr) -> bool:
    """True when the answer's only candidates are the relay's public address."""
    candidates = answer_candidates(sdp)
    return bool(candidates) and all(c == public for c in candidates)


@dataclass(eq=False)
class LiveSession:
    session_id: str
    ufrag: str
    pc: RTCPeerConnection
    agent: VoiceAgent
    answer_sdp: str = ""
    connected: bool = False
    answered: bool = False  # "answered" published: later events may follow
    checking: bool = False  # "checking" published (once)
    timer: asyncio.TimerHandle | None = None
    created_at: float = field(default_factory=time.monotonic)
    published: asyncio.Task[None] | None = None  # the last queued event (events go in order)


class SessionManager:
    """All sessions of one transceiver, on one ``IceMux``."""

    def __init__(
        self, *, mux: IceMux, agent_factory: AgentFactory, reporter: SessionReporter,
        events: EventSink, connect_timeout: float, capacity: int,
    ) -> None:
        self.mux = mux
        self._agent_factory = agent_factory
        self._reporter = reporter
        self._events = events
        self.connect_timeout = connect_timeout
        self.capacity = capacity
        self.draining = False
        self._sessions: dict[str, LiveSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def connected(self) -> int:
        return sum(1 for s in self._sessions.values() if s.connected)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    async def open(
        self, *, session_id: str, offer_sdp: str, ufrag: str, pwd: str, relay_public: Addr
    ) -> str:
        """Create the session and return its answer SDP; ``ControlError`` when refused."""
        existing = self._sessions.get(session_id)
        if existing is not None and existing.ufrag == ufrag and existing.answer_sdp:
            return existing.answer_sdp  # a retried request: same answer
        self._check_admission(session_id, ufrag, pwd)
        offer = strip_candidates(offer_sdp)
        try:
            parse_offer(offer)
        except ValueError as exc:
            code = "no_audio" if str(exc) == "no audio" else "bad_sdp"
            raise ControlError(code, str(exc)) from None
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        session = LiveSession(session_id, ufrag, pc, self._agent_factory(session_id))
        self._sessions[session_id] = session
        try:
            answer = await self._negotiate(session, offer, pwd, relay_public)
        except BaseException:
            await self._remove(session_id, state="failed", reason="no answer", report=False)
            raise
        session.answer_sdp = answer
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(self.connect_timeout, self._on_connect_timeout, session_id)
        self._publish_in_order(session, EventState.ANSWERED)  # not awaited: the answer goes now
        session.answered = True
        self._on_ice_state(session)  # checking may have begun before the answer was out
        return answer

    def _check_admission(self, session_id: str, ufrag: str, pwd: str) -> None:
        if self.draining:
            raise ControlError("draining", "transceiver is draining")
        if len(self._sessions) >= self.capacity:
            raise ControlError("full", f"{len(self._sessions)}/{self.capacity} sessions")
        if session_id in self._sessions or self.mux.has_ufrag(ufrag):
            raise ControlError("internal", "session or ufrag already in use")
        try:
            validate_username(ufrag)
            validate_password(pwd)
        except ValueError as exc:
            raise ControlError("internal", str(exc)) from None

    async def _negotiate(
        self, session: LiveSession, offer: str, pwd: str, public: Addr
    ) -> str:
        pc = session.pc
        binding = MuxBinding(self.mux, session.session_id, session.ufrag, pwd, public)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                tune_audio_receiver(pc, track)  # 20 ms instead of aiortc's 80 ms hold-back
                pc.addTrack(session.agent.attach(track))

        pc.on("connectionstatechange", lambda: self._on_state(session))
        pc.on("iceconnectionstatechange", lambda: self._on_ice_state(session))
        try:
            with bind_next_connection(binding):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except ValueError as exc:  # aiortc rejects e.g. missing ICE credentials or fingerprint
            raise ControlError("bad_sdp", str(exc)) from None
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio":
                transceiver.direction = "inactive"  # voice only: never decode video
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        if not is_relay_only_answer(answer, public):
            raise ControlError("internal", "answer carries a non-relay candidate")
        return answer

    def _on_ice_state(self, session: LiveSession) -> None:
        if (
            session.pc.iceConnectionState in ("checking", "completed")
            and session.answered  # else open() calls again after publishing "answered"
            and not session.checking
            and self._sessions.get(session.session_id) is session
        ):
            session.checking = True
            self._publish_in_order(session, EventState.CHECKING)

    def _on_state(self, session: LiveSession) -> None:
        if self._sessions.get(session.session_id) is not session:
            return  # already being removed
        state = session.pc.connectionState
        if state == "connected" and not session.connected:
            session.connected = True
            if session.timer is not None:
                session.timer.cancel()
            self._spawn(self._report_connected(session))
        elif state == "failed":
            self._spawn(self.close(session.session_id, state="failed", reason="ice/dtls failed"))
        elif state == "closed":
            self._spawn(self.close(session.session_id, state="ended", reason="closed"))

    def _on_connect_timeout(self, session_id: str) -> None:
        reason = f"not connected within {self.connect_timeout:g}s"
        self._spawn(self.close(session_id, state="failed", reason=reason))

    async def _report_connected(self, session: LiveSession) -> None:
        session.agent.on_event(self._event(session.session_id, EventState.CONNECTED, ""))
        self._publish_in_order(session, EventState.CONNECTED)
        try:
            await self._reporter.connected(session_id=session.session_id)
        except Exception:
            logger.exception("session %s: reporting connected failed", session.session_id)

    async def close(self, session_id: str, *, state: str = "ended", reason: str = "") -> bool:
        """Close a session (idempotent); True if it was live."""
        return await self._remove(session_id, state=state, reason=reason)

    async def close_all(self, *, reason: str) -> None:
        await asyncio.gather(
            *(self._remove(sid, state="ended", reason=reason) for sid in list(self._sessions))
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _remove(
        self, session_id: str, *, state: str, reason: str, report: bool = True
    ) -> bool:
        """The one removal path: record, timer, mux keys (ufrag, addresses), pc, agent.

        ``report=False`` when the answer was never returned: signaling records that failure.
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if session.timer is not None:
            session.timer.cancel()
        self.mux.detach(session_id)
        await session.pc.close()
        failed = state == "failed"
        event = self._event(session_id, EventState.FAILED if failed else EventState.CLOSED, reason)
        session.agent.on_event(event)
        await session.agent.close()
        logger.info("session %s %s: %s", session_id, state, reason)
        if not report:
            return True
        if session.published is not None:  # queued events go out before the last one
            await asyncio.gather(session.published, return_exceptions=True)
        await self._publish_event(event)
        try:
            await self._reporter.ended(session_id=session_id, state=state, reason=reason)
        except Exception:
            logger.exception("session %s: reporting end failed", session_id)
        return True

    def _event(self, session_id: str, state: EventState, detail: str) -> SessionEvent:
        return SessionEvent(session_id, state, detail, time.time())

    def _publish_in_order(self, session: LiveSession, state: EventState) -> None:
        """Queue an event behind the session's previous one, without waiting for Redis."""
        event, previous = self._event(session.session_id, state, ""), session.published

        async def publish() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self._publish_event(event)

        session.published = asyncio.get_running_loop().create_task(publish())
        self._tasks.add(session.published)
        session.published.add_done_callback(self._tasks.discard)

    async def _publish_event(self, event: SessionEvent) -> None:
        try:
            await self._events.publish(event)
        except Exception:
            logger.exception("session %s: publishing %s failed", event.session_id, event.state)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
