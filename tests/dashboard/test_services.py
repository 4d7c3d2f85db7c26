from __future__ import annotations

import pytest

from dashboard.services import node_set_draining
from relays.models import NodeState
from tests.dashboard.fleet import make_nodes, make_region
from transceivers.models import Transceiver

pytestmark = [pytest.mark.django_db]


def test_drain_is_idempotent_and_resume_only_undoes_a_drain() -> None:
    _, xcvr = make_nodes(make_region("local", default=True), 1)
    assert node_set_draining(kind="transceiver", node_id=1, draining=True, reason="r")
    assert not node_set_draining(kind="transceiver", node_id=1, draining=True)
    Transceiver.objects.filter(pk=xcvr.pk).update(state=NodeState.DOWN)
    assert not node_set_draining(kind="transceiver", node_id=1, draining=False)
    assert Transceiver.objects.get(pk=xcvr.pk).state == NodeState.DOWN  # the checker's call


def test_unknown_node_raises() -> None:
    with pytest.raises(Transceiver.DoesNotExist):
        node_set_draining(kind="transceiver", node_id=7, draining=True)
