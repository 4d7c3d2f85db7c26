"""A StatefulSet pod's transceiver id from its region's base and its ordinal."""

from __future__ import annotations

import pytest

from fleet.nodes import MAX_NODE_ID, transceiver_id_of_pod


def test_pod_ordinal_is_added_to_the_region_base() -> None:
    assert transceiver_id_of_pod(100, "0") == 100
    assert transceiver_id_of_pod(300, "1") == 301


@pytest.mark.parametrize(("base", "ordinal"), [(0, "0"), (MAX_NODE_ID, "1"), (100, "-1"),
                                               (100, ""), (100, "tx-1"), (100, " 1")])
def test_ids_outside_the_ufrag_range_and_bad_ordinals_are_refused(base: int,
                                                                   ordinal: str) -> None:
    with pytest.raises(ValueError, match="transceiver id out of range|pod ordinal"):
        transceiver_id_of_pod(base, ordinal)
