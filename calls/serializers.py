"""JSON shapes of the API and the session events socket: sessions, answers, regions."""

from __future__ import annotations

from typing import Any

from calls.models import Session
from calls.placement import RegionCapacity
from geo.distance import LatLon, great_circle_km
from geo.geoip import Location
from relays.models import RelayShard
from transceivers.models import Transceiver


def session_json(session: Session, *, with_client_ip: bool) -> dict[str, Any]:
    """``GET /v1/sessions/<id>``; the caller's address only for staff (``with_client_ip``)."""
    body = {
        "id": str(session.id),
        "state": session.state,
        "reason": session.reason,
        "region": session.region.code,
        "region_reason": session.region_reason,
        "relay_shard": session.relay.shard_id,
        "relay_public": f"{session.relay.public_host}:{session.relay.public_port}",
        "transceiver": session.transceiver.transceiver_id,
        "created_at": session.created_at.isoformat(),
        "answered_at": session.answered_at and session.answered_at.isoformat(),
        "connected_at": session.connected_at and session.connected_at.isoformat(),
        "ended_at": session.ended_at and session.ended_at.isoformat(),
    }
    if with_client_ip:
        body["client_ip"] = session.client_ip
    return body


def answer_json(session: Session, answer: str) -> dict[str, Any]:
    """The JSON form of a WHIP answer (``{"type": "answer", "sdp": ...}`` and where it went)."""
    return {
        "type": "answer",
        "sdp": answer,
        "session_id": str(session.id),
        "region": session.region.code,
        "region_reason": session.region_reason,
        "relay_shard": session.relay.shard_id,
        "transceiver": session.transceiver.transceiver_id,
    }


def session_snapshot(session: Session) -> dict[str, Any]:
    """The first message a ``/ws/sessions/<id>`` subscriber gets: the state in the database."""
    return {
        "type": "session.state",
        "session_id": str(session.id),
        "state": session.state,
        "detail": session.reason,
        "region": session.region.code,
        "region_reason": session.region_reason,
        "relay_shard": session.relay.shard_id,
        "transceiver": session.transceiver.transceiver_id,
        "at": session.created_at.timestamp(),
    }


def _state_json(node: RelayShard | Transceiver) -> dict[str, Any]:
    """The node's last health transition (issue #4): reason and when."""
    changed = node.state_changed_at
    return {"state_reason": node.state_reason, "state_changed_at": changed and changed.isoformat()}


def region_json(capacity: RegionCapacity, client: LatLon | None) -> dict[str, Any]:
    """One region of ``GET /v1/regions``: status, load, distance and every node's state."""
    region = capacity.region
    point = LatLon(region.latitude, region.longitude)
    return {
        "code": region.code,
        "name": region.name,
        "latitude": region.latitude,
        "longitude": region.longitude,
        "default": region.is_default,
        "enabled": region.enabled,
        "status": capacity.status,
        "load": round(capacity.load, 3),
        "distance_km": round(great_circle_km(client, point), 1) if client else None,
        "relays": [
            {"shard": r.shard_id, "public": f"{r.public_host}:{r.public_port}", "state": r.state,
             **_state_json(r), "live": r in capacity.relays}
            for r in capacity.all_relays or capacity.relays
        ],
        "transceivers": [
            {"id": t.transceiver.transceiver_id, "state": t.transceiver.state,
             **_state_json(t.transceiver),
             "live": t.heartbeat is not None, "sessions": t.live_sessions,
             "capacity": t.transceiver.capacity, "available": t.available,
             "held": t.held or None}
            for t in capacity.transceivers
        ],
    }


def regions_json(
    client_ip: str | None, location: Location | None, capacities: list[RegionCapacity]
) -> dict[str, Any]:
    """``GET /v1/regions``: the caller as located, then the regions in the given order."""
    return {
        "client": {
            "ip": client_ip,
            "location": None if location is None else {
                "latitude": location.latitude, "longitude": location.longitude,
                "country": location.country_iso_code, "city": location.city_name,
            },
        },
        "regions": [region_json(c, location.point if location else None) for c in capacities],
    }
