"""The relay's optional C fast path (``relays/_fastpath.c``) and the mirror that feeds it.

The extension forwards known flows in ``recvmmsg``/``sendmmsg`` batches without a Python call per
datagram; every decision stays the pure core's (``relays.demux``): ``FlowMirror`` copies each
learn, re-point, confirm and removal of the core's ``FlowTable`` into the C table, and copies
the C side's ``last_seen`` back before anything reads it (expiry, refresh, drain). Where the
extension is not built (no compiler, not Linux) ``FastPath`` is None and the relay runs its
pure-Python path.
"""

from __future__ import annotations

from relays.demux import Demux
from relays.flows import Flow

try:
    from relays._fastpath import FastPath
except ImportError:  # not built: the pure-Python path serves
    FastPath = None  # type: ignore[assignment,misc]


def available() -> bool:
    """True when the C extension is built and importable."""
    return FastPath is not None


class FlowMirror:
    """A ``FlowWatcher`` keeping the C flow table equal to the core's."""

    def __init__(self, fast: FastPath, core: Demux) -> None:
        self.fast, self.core = fast, core

    def flow_changed(self, flow: Flow) -> None:
        if "%" in flow.client[0] or "%" in flow.transceiver[0]:  # scoped v6: Python routes it
            self.fast.forget(flow.header)
            return
        self.fast.learn(flow.header, flow.client, flow.transceiver, self.core.routes_frames(flow),
                        flow.local)

    def flow_removed(self, flow: Flow) -> None:
        self.fast.forget(flow.header)

    def sync_last_seen(self) -> None:
        """Copy the times the C side forwarded for each flow into the core's flows."""
        get = self.core.flows.get_by_header
        for header, last_seen in self.fast.take_touched():
            flow = get(header)
            if flow is not None and last_seen > flow.last_seen:
                flow.last_seen = last_seen
