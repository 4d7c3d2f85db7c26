"""What ``lab up`` still waits for, judged from what the fleet itself reports (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def regions_pending(body: Mapping[str, object], regions: Sequence[str],
                    relays: int, transceivers: int) -> list[str]:
    """Names of what ``GET /v1/regions`` does not yet show as up: each region ``ok`` with all
    of its relay shards and transceivers live and probed healthy (a relay that answers no probe
    through its public address is not up, even while its heartbeat is fresh)."""
    listed = body.get("regions")
    if not isinstance(listed, list):
        return ["regions"]
    by_code = {str(r.get("code")): r for r in listed if isinstance(r, dict)}
    pending = []
    for code in regions:
        region = by_code.get(code)
        if region is None:
            pending.append(f"{code}:missing")
            continue
        if region.get("status") != "ok":
            pending.append(f"{code}:{region.get('status')}")
        live_relays = sum(1 for r in region.get("relays", []) if _up(r))
        live_xcvrs = sum(1 for t in region.get("transceivers", []) if _up(t))
        if live_relays < relays:
            pending.append(f"{code}:relays {live_relays}/{relays}")
        if live_xcvrs < transceivers:
            pending.append(f"{code}:transceivers {live_xcvrs}/{transceivers}")
    return pending


def _up(node: Mapping[str, object]) -> bool:
    return bool(node.get("live")) and node.get("state") == "healthy"


def celery_pending(beat_value: bytes | None, started: float) -> list[str]:
    """The worker ran the beat's heartbeat task since this lab started (a full round trip)."""
    if beat_value is None or float(beat_value) < started:
        return ["celery"]
    return []
