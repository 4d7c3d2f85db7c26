from __future__ import annotations

import pytest

from relays.flows import CONSENT_TIMEOUT, FlowTable
from relays.framing import pack_header

XCVR = ("10.0.0.2", 7000)


def test_learn_get_and_precomputed_header() -> None:
    table = FlowTable(max_flows=4, idle_timeout=60)
    flow = table.learn(("192.0.2.1", 5000), transceiver_id=3, transceiver=XCVR, now=1.0)
    assert table.get(("192.0.2.1", 5000)) is flow
    assert flow.header == pack_header(("192.0.2.1", 5000))
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


def test_bound_evicts_oldest_learned() -> None:
    table = FlowTable(max_flows=3)
    for port in range(5):
        table.learn(("192.0.2.1", port), transceiver_id=1, transceiver=XCVR, now=float(port))
    assert len(table) == 3 and table.evicted == 2
    assert table.get(("192.0.2.1", 0)) is None and table.get(("192.0.2.1", 1)) is None
    assert table.get_by_header(pack_header(("192.0.2.1", 0))) is None
    assert table.get(("192.0.2.1", 4)) is not None


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
