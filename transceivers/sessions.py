"""Session lifecycle on a transceiver: offer -> answer on the mux, connect timeout, close.

One ``LiveSession`` record per session; its keys (ufrag, learned client addresses) live in the
mux table. ``SessionManager._remove`` is the one place that removes a session and all its keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aioice.ice import validate_password, validate_username
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from fleet.addresses import Addr
from transceivers import lean_rtp
from transceivers.agents import AgentFactory, VoiceAgent
from transceivers.aiortc_hook import MuxBinding, bind_next_connection, certificates_from
from transceivers.background import BackgroundTasks
from transceivers.control import ControlError, EventState, SessionEvent
from transceivers.dtls import CertificateKeeper
from transceivers.jitter import tune_audio_receiver
from transceivers.metrics import TransceiverMetrics
from transceivers.reporting import EventSink, SessionReporter
from transceivers.sdp import (
    add_tcp_candidate,
    is_relay_only_answer,
    parse_offer,
    strip_candidates,
)
from transceivers.shared_socket import IceMux

logger = logging.getLogger(__name__)

# What aiortc raises on offers it parses but cannot answer (it asserts and dereferences None).
UNNEGOTIABLE = (AttributeError, KeyError, IndexError, TypeError, AssertionError,
                InvalidAccessError, OperationError)


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
    answered_at: float | None = None  # monotonic: set-up times are measured from the answer
    ice_connected: bool = False
    published: asyncio.Task[None] | None = None  # the last queued event (events go in order)


class SessionManager:
    """All sessions of one transceiver, on one ``IceMux``."""

    def __init__(
        self, *, mux: IceMux, agent_factory: AgentFactory, reporter: SessionReporter,
        events: EventSink, connect_timeout: float, capacity: int, incarnation: str = "",
        metrics: TransceiverMetrics | None = None, certificates: CertificateKeeper | None = None,
    ) -> None:
        self.mux = mux
        # one DTLS certificate for every session (transceivers.dtls); None: one per session
        self.certificates = certificates
        self.incarnation = incarnation  # of this process: recorded on each session it answers
        self._agent_factory = agent_factory
        self._reporter = reporter
        self._events = events
        self.connect_timeout = connect_timeout
        self.capacity = capacity
        self.draining = False
        self.metrics = metrics
        self._sessions: dict[str, LiveSession] = {}
        self._tasks = BackgroundTasks()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def connected(self) -> int:
        return sum(1 for s in self._sessions.values() if s.connected)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def live(self) -> list[LiveSession]:
        return list(self._sessions.values())

    async def open(
        self, *, session_id: str, offer_sdp: str, ufrag: str, pwd: str, relay_public: Addr,
        relay_tcp_port: int = 0,
    ) -> str:
        """Create the session and return its answer SDP; ``ControlError`` when refused.

        The session is not announced yet: once the answer is on its way to signaling, the caller
        calls ``announce_answered`` (its ``answered`` event and report would otherwise compete
        with the reply on this loop)."""
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
        with certificates_from(self.certificates):
            pc = RTCPeerConnection(
                RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
            )
        session = LiveSession(session_id, ufrag, pc, self._agent_factory(session_id))
        self._sessions[session_id] = session
        try:
            answer = await self._negotiate(session, offer, pwd, relay_public, relay_tcp_port)
        except BaseException:
            await self._remove(session_id, state="failed", reason="no answer", report=False)
            raise
        session.answer_sdp = answer
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(self.connect_timeout, self._on_connect_timeout, session_id)
        session.answered_at = time.monotonic()
        return answer

    def announce_answered(self, session_id: str) -> None:
        """Queue the ``answered`` event and report of a session ``open`` answered (neither is
        awaited); nothing when it is gone or was announced already (a retried request)."""
        session = self._sessions.get(session_id)
        if session is None or session.answered or not session.answer_sdp:
            return
        self._publish_in_order(session, EventState.ANSWERED)
        self._tasks.spawn(self._report_answered(session_id))
        session.answered = True
        self._on_ice_state(session)  # checking may have begun before the answer was out

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
        self, session: LiveSession, offer: str, pwd: str, public: Addr, tcp_port: int
    ) -> str:
        pc = session.pc
        binding = MuxBinding(self.mux, session.session_id, session.ufrag, pwd, public)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                tune_audio_receiver(pc, track)  # each frame at once (aiortc: 80 ms, stalls on loss)
                pc.addTrack(session.agent.attach(track))

        pc.on("connectionstatechange", lambda: self._on_state(session))
        pc.on("iceconnectionstatechange", lambda: self._on_ice_state(session))
        try:
            with bind_next_connection(binding):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind != "audio":
                    transceiver.direction = "inactive"  # voice only: never decode video
            await pc.setLocalDescription(await pc.createAnswer())
        except ValueError as exc:  # aiortc rejects e.g. missing ICE credentials or fingerprint
            raise ControlError("bad_sdp", str(exc)) from None
        except UNNEGOTIABLE as exc:  # no a=setup, duplicate mids, no codec in common, ...
            raise ControlError("bad_sdp", f"offer cannot be negotiated: {exc}") from None
        answer = pc.localDescription.sdp
        if tcp_port:
            answer = add_tcp_candidate(answer, public, tcp_port)
        if not is_relay_only_answer(answer, public, tcp_port):
            raise ControlError("internal", "answer carries a non-relay candidate")
        return answer

    def _on_ice_state(self, session: LiveSession) -> None:
        if session.pc.iceConnectionState == "completed" and not session.ice_connected:
            session.ice_connected = True  # aiortc's name for ICE "connected"
            self._observe_setup(session, "ice")
        if (
            session.pc.iceConnectionState in ("checking", "completed")
            and session.answered  # else announce_answered calls again once "answered" is out
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
            self._observe_setup(session, "dtls")
            if lean_rtp.active():
                lean_rtp.attach(session.pc)
            if session.timer is not None:
                session.timer.cancel()
            self._tasks.spawn(self._report_connected(session))
        elif state == "failed":
            failed = self.close(session.session_id, state="failed", reason="ice/dtls failed")
            self._tasks.spawn(failed)
        elif state == "closed":
            self._tasks.spawn(self.close(session.session_id, state="ended", reason="closed"))

    def _observe_setup(self, session: LiveSession, stage: str) -> None:
        if self.metrics is None or session.answered_at is None:
            return
        elapsed = time.monotonic() - session.answered_at
        histogram = self.metrics.ice_setup if stage == "ice" else self.metrics.dtls_setup
        histogram.observe(elapsed)

    def _on_connect_timeout(self, session_id: str) -> None:
        reason = f"not connected within {self.connect_timeout:g}s"
        self._tasks.spawn(self.close(session_id, state="failed", reason=reason))

    async def _report_answered(self, session_id: str) -> None:
        try:
            await self._reporter.answered(session_id=session_id, incarnation=self.incarnation)
        except Exception:
            logger.exception("session %s: reporting answered failed", session_id)

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
        await self._tasks.cancel_all()

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
        if self.metrics is not None:
            self.metrics.session_ended(state)
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

        session.published = self._tasks.spawn(publish())

    async def _publish_event(self, event: SessionEvent) -> None:
        try:
            await self._events.publish(event)
        except Exception:
            logger.exception("session %s: publishing %s failed", event.session_id, event.state)
