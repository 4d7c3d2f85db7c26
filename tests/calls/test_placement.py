"""The pure placement decision: no DB, no Redis; unsaved rows only carry the facts."""

from __future__ import annotations

import time

from calls.placement import Placement, RegionCapacity, TransceiverLoad, placement_decide
from fleet.heartbeats import TransceiverHeartbeat
from fleet.nodes import NodeState
from geo.models import Region
from relays.models import RelayShard
from transceivers.models import Transceiver


def region(code: str, *, enabled: bool = True) -> Region:
    return Region(code=code, name=code, latitude=0.0, longitude=0.0, enabled=enabled)


def relay(shard: int, where: Region, live: int = 0) -> RelayShard:
    row = RelayShard(shard_id=shard, region=where, public_host="127.0.0.1", public_port=3000)
    row.live = live  # type: ignore[attr-defined]  # what the capacity query annotates
    return row


def load(xid: int, where: Region, live: int = 0, *, capacity: int = 10, beat: bool = True,
         state: str = NodeState.HEALTHY, held: str = "") -> TransceiverLoad:
    row = Transceiver(transceiver_id=xid, region=where, capacity=capacity, state=state)
    heartbeat = TransceiverHeartbeat(
        transceiver_id=xid, bind="127.0.0.1:1", pid=1, sessions=live, connected=live,
        capacity=capacity, loop_lag_ms=0.1, draining=False, sent_at=time.time(),
    ) if beat else None
    return TransceiverLoad(row, live, heartbeat, held)


def capacity(
    where: Region, relays: list[RelayShard], loads: list[TransceiverLoad]
) -> RegionCapacity:
    return RegionCapacity(where, tuple(relays), tuple(loads), tuple(relays))


def summary(placement: Placement | None) -> tuple[str, str, int, int] | None:
    if placement is None:
        return None
    return (placement.region.code, placement.region_reason, placement.relay.shard_id,
            placement.transceiver.transceiver_id)


def test_nearest_usable_region_least_loaded_relay_and_transceiver() -> None:
    eu = region("eu")
    ranked = [(capacity(eu, [relay(1, eu, live=5), relay(2, eu, live=1)],
                        [load(1, eu, live=7), load(2, eu, live=3)]), "nearest")]
    assert summary(placement_decide(ranked)) == ("eu", "nearest", 2, 2)


def test_fallback_names_the_first_region_that_could_not_serve() -> None:
    eu, us, ap = region("eu"), region("us"), region("ap", enabled=False)
    ranked = [
        (capacity(ap, [relay(3, ap)], [load(3, ap)]), "nearest"),
        (capacity(eu, [relay(1, eu)], [load(1, eu, live=10)]), "nearest"),
        (capacity(us, [relay(2, us)], [load(2, us)]), "nearest"),
    ]
    assert summary(placement_decide(ranked)) == ("us", "fallback:ap-disabled", 2, 2)
    ranked = [(capacity(eu, [relay(1, eu)], [load(1, eu, beat=False)]), "default"),
              (capacity(us, [], [load(2, us)]), "default")]
    assert placement_decide(ranked) is None
    assert ranked[0][0].status == "no_transceiver" and ranked[1][0].status == "no_relay"


def test_held_transceiver_only_when_nothing_else_can() -> None:
    eu = region("eu")
    both = capacity(eu, [relay(1, eu)], [load(1, eu, live=1, held="skew"), load(2, eu, live=6)])
    assert summary(placement_decide([(both, "pinned")])) == ("eu", "pinned", 1, 2)
    alone = capacity(eu, [relay(1, eu)], [load(1, eu, held="skew"),
                                          load(2, eu, state=NodeState.DOWN)])
    assert summary(placement_decide([(alone, "pinned")])) == ("eu", "pinned", 1, 1)


def test_later_regions_are_not_read_once_one_serves() -> None:
    eu = region("eu")
    read: list[str] = []

    def ranked():  # type: ignore[no-untyped-def]
        read.append("eu")
        yield capacity(eu, [relay(1, eu)], [load(1, eu)]), "nearest"
        read.append("us")
        raise AssertionError("the second region was read")

    assert summary(placement_decide(ranked())) == ("eu", "nearest", 1, 1)
    assert read == ["eu"]
