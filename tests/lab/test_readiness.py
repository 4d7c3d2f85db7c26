"""What ``lab up`` waits for, judged from /v1/regions and the Celery heartbeat."""

from __future__ import annotations

from lab.readiness import celery_pending, regions_pending


def region(code: str, status: str = "ok", relays: int = 1, live: int = 2) -> dict[str, object]:
    return {"code": code, "status": status,
            "relays": [{"shard": 1, "live": True, "state": "healthy"}] * relays,
            "transceivers": [{"id": i, "live": i < live, "state": "healthy"} for i in range(2)]}


def test_all_regions_up_is_ready() -> None:
    body = {"regions": [region("eu-west"), region("us-east")]}
    assert regions_pending(body, ["eu-west", "us-east"], relays=1, transceivers=2) == []


def test_missing_or_degraded_regions_are_named() -> None:
    body = {"regions": [region("eu-west", status="no_relay", relays=0), region("us-east", live=1)]}
    pending = regions_pending(body, ["eu-west", "us-east", "ap-south"], relays=1, transceivers=2)
    assert pending == ["eu-west:no_relay", "eu-west:relays 0/1", "us-east:transceivers 1/2",
                       "ap-south:missing"]
    assert regions_pending({"detail": "x"}, ["eu-west"], relays=1, transceivers=2) == ["regions"]


def test_a_live_relay_not_yet_probed_healthy_is_pending() -> None:
    body = {"regions": [region("eu-west")]}
    body["regions"][0]["relays"] = [{"shard": 1, "live": True, "state": "unknown"}]  # type: ignore[index]
    assert regions_pending(body, ["eu-west"], relays=1, transceivers=2) == ["eu-west:relays 0/1"]


def test_celery_heartbeat_must_be_newer_than_the_lab() -> None:
    assert celery_pending(None, started=100.0) == ["celery"]
    assert celery_pending(b"99.5", started=100.0) == ["celery"]
    assert celery_pending(b"100.5", started=100.0) == []
