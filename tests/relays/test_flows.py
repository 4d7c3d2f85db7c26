from __future__ import annotations

import sys

import pytest

from relays.actions import SendToClient
from relays.flows import CONSENT_TIMEOUT, Flow, FlowTable
from relays.framing import pack_header

XCVR = ("10.0.0.2", 7000)


def test_learn_get_and_precomputed_header() -> None:
    table = FlowTable(max_flows=4, idle_timeout=60)
    flow = table.learn(("192.0.2.1", 5000), transceiver_id=3, transceiver=XCVR, now=1.0)
    assert table.get(("192.0.2.1", 5000)) is flow
    assert flow.header == pack_header(("192.0.2.1", 5000))
    assert flow.send == SendToClient(("192.0.2.1", 5000), 8)  # the reply action, precomputed
    assert (flow.transceiver_id, flow.transceiver, flow.last_seen) == (3, XCVR, 1.0)
    assert table.get(("192.0.2.1", 5001)) is None
    assert len(table) == 1 and list(table) == [flow]
    assert table.get_by_header(flow.header) is flow
    table.remove(flow.client)
    assert table.get_by_header(flow.header) is None


def test_relearn_repoints_in_place() -> None:
    table = FlowTable()
    first = table.learn(("192.0.2.1", 5000), transceiver_id=3, transceiver=XCVR, now=1.0)
    again = table.learn(("192.0.2.1", 5000), transceiver_id=4, transceiver=("10.0.0.3", 1), now=2.0)
    assert again is first and len(table) == 1
    assert (again.transceiver_id, again.transceiver, again.last_seen) == (4, ("10.0.0.3", 1), 2.0)


def test_bound_evicts_oldest_learned_when_all_are_confirmed() -> None:
    table = FlowTable(max_flows=3)
    for port in range(5):
        table.learn(("192.0.2.1", port), transceiver_id=1, transceiver=XCVR, now=float(port),
                    confirmed=True)
    assert len(table) == 3 and table.evicted == 2
    assert table.get(("192.0.2.1", 0)) is None and table.get(("192.0.2.1", 1)) is None
    assert table.get_by_header(pack_header(("192.0.2.1", 0))) is None
    assert table.get(("192.0.2.1", 4)) is not None


def test_bound_evicts_the_newest_unconfirmed_flow_first() -> None:
    table = FlowTable(max_flows=3)
    live = table.learn(("192.0.2.1", 1), transceiver_id=1, transceiver=XCVR, now=0.0)
    table.confirm(live)  # a frame came back for it
    table.learn(("192.0.2.1", 2), transceiver_id=1, transceiver=XCVR, now=1.0)
    for port in range(100, 110):  # a flood of new sources
        table.learn(("198.51.100.1", port), transceiver_id=1, transceiver=XCVR, now=2.0)
    assert table.evicted == 9 and len(table) == 3
    assert table.get(("192.0.2.1", 1)) is live and table.get(("192.0.2.1", 2)) is not None
    assert table.get(("198.51.100.1", 109)) is not None  # the newest flood flow, until the next
    assert table.evict().client == ("198.51.100.1", 109)
    assert table.evict().client == ("192.0.2.1", 2)
    assert table.evict() is live  # only confirmed flows left: the oldest goes


def test_flows_per_ufrag_are_counted_until_removed() -> None:
    table = FlowTable()
    for port in range(3):
        table.learn(("192.0.2.1", port), transceiver_id=1, transceiver=XCVR, now=0.0,
                    ufrag="u")
    table.learn(("192.0.2.1", 9), transceiver_id=1, transceiver=XCVR, now=9.0)
    table.learn(("192.0.2.1", 0), transceiver_id=2, transceiver=XCVR, now=1.0,
                ufrag="u")  # re-points: still one flow
    assert table.ufrag_flows("u") == 3 and table.ufrag_flows("other") == 0
    table.remove(("192.0.2.1", 1))
    assert table.ufrag_flows("u") == 2
    table.expire(now=61.5)
    assert table.ufrag_flows("u") == 0 and len(table) == 1


def test_tables_give_memory_back_after_expiry() -> None:
    table = FlowTable(max_flows=10_000)
    empty = sys.getsizeof(table._flows)
    for port in range(5000):
        table.learn(("192.0.2.1", port), transceiver_id=1, transceiver=XCVR, now=0.0,
                    ufrag=str(port))
    full = [sys.getsizeof(d) for d in (table._flows, table._by_header, table._unconfirmed,
                                       table._per_ufrag)]
    table.expire(now=100.0)
    after = [sys.getsizeof(d) for d in (table._flows, table._by_header, table._unconfirmed,
                                        table._per_ufrag)]
    assert len(table) == 0 and min(full) > 50 * empty
    assert max(after) <= empty


def test_expire_idle_only() -> None:
    table = FlowTable(idle_timeout=40)
    old = table.learn(("192.0.2.1", 1), transceiver_id=1, transceiver=XCVR, now=0.0)
    table.learn(("192.0.2.1", 2), transceiver_id=1, transceiver=XCVR, now=30.0)
    assert table.expire(now=40.0) == []  # exactly idle_timeout is not yet idle
    assert table.expire(now=41.0) == [old]
    assert len(table) == 1 and table.expired == 1
    assert table.get(("192.0.2.1", 1)) is None


def test_active_since_and_remove_transceiver() -> None:
    table = FlowTable()
    a = table.learn(("192.0.2.1", 1), transceiver_id=1, transceiver=XCVR, now=5.0)
    b = table.learn(("192.0.2.1", 2), transceiver_id=2, transceiver=XCVR, now=10.0)
    assert table.active_since(6.0) == [b]
    assert table.active_since(5.0) == [a, b]
    assert table.remove_transceiver(1) == [a]
    assert list(table) == [b]
    assert table.remove(("192.0.2.1", 2)) is b
    assert table.remove(("192.0.2.1", 2)) is None


def test_iteration_is_a_snapshot() -> None:
    table = FlowTable()
    for port in range(3):
        table.learn(("192.0.2.1", port), transceiver_id=1, transceiver=XCVR, now=0.0)
    for flow in table:
        table.remove(flow.client)
    assert len(table) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"idle_timeout": CONSENT_TIMEOUT - 1}, "idle timeout shorter than ICE consent"),
        ({"max_flows": 0}, "max_flows must be positive"),
    ],
)
def test_config_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        FlowTable(**kwargs)  # type: ignore[arg-type]


class Recorder:
    """A FlowWatcher that keeps what it was told (what the fast path's mirror is told)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, int], bool]] = []

    def flow_changed(self, flow: Flow) -> None:
        self.events.append(("changed", flow.client, flow.confirmed))

    def flow_removed(self, flow: Flow) -> None:
        self.events.append(("removed", flow.client, flow.confirmed))


def test_the_watcher_hears_every_learn_confirm_move_and_removal() -> None:
    table = FlowTable(max_flows=2, idle_timeout=60)
    watcher = table.watcher = Recorder()
    a, b, c = ("192.0.2.1", 1), ("192.0.2.2", 2), ("192.0.2.3", 3)
    flow = table.learn(a, transceiver_id=3, transceiver=XCVR, now=1.0)
    table.confirm(flow)
    table.move(flow, ("10.0.0.9", 7000))
    table.learn(b, transceiver_id=3, transceiver=XCVR, now=2.0)
    table.learn(c, transceiver_id=3, transceiver=XCVR, now=3.0)  # full: b (unconfirmed) goes
    table.expire(100.0)
    assert watcher.events == [
        ("changed", a, False), ("changed", a, True), ("changed", a, True),
        ("changed", b, False), ("removed", b, False), ("changed", c, False),
        ("removed", a, True), ("removed", c, False),
    ]
    assert flow.transceiver == ("10.0.0.9", 7000)
