"""The transceiver's ``SessionReporter`` that writes the ``Session`` row (``calls.services`` in a
worker thread, never blocking the transceiver's loop)."""

from __future__ import annotations

from channels.db import database_sync_to_async

from calls.services import (
    session_end,
    session_mark_answered,
    session_mark_connected,
)


class SessionRowReporter:
    """Records answered / connected / ended on the session's row (state-filtered, so
    idempotent), and which process incarnation holds it."""

    async def answered(self, *, session_id: str, incarnation: str) -> None:
        await database_sync_to_async(session_mark_answered)(
            session_id=session_id, incarnation=incarnation
        )

    async def connected(self, *, session_id: str) -> None:
        await database_sync_to_async(session_mark_connected)(session_id=session_id)

    async def ended(self, *, session_id: str, state: str, reason: str) -> None:
        await database_sync_to_async(session_end)(session_id=session_id, state=state,
                                                  reason=reason)
