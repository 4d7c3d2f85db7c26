"""WHIP endpoints (RFC 9725): POST /v1/sessions, GET/DELETE /v1/sessions/<id>. Thin: parse,
call selectors/services, format."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from calls import services
from calls.models import Session
from calls.problems import problem
from calls.ratelimit import rate_limited
from calls.sdp import validate_offer
from calls.selectors import (
    RegionCapacity,
    placement_choose,
    region_capacity,
    session_get,
)
from calls.steering import SteeringError, client_ip_of, locate_client, rank_regions_for
from geo.distance import LatLon, great_circle_km
from relays.models import RelayShard
from transceivers.control import ControlError, ControlTimeout, request_answer, request_close
from transceivers.models import Transceiver

logger = logging.getLogger(__name__)

EXPOSED_HEADERS = "Location, ETag, X-Region, X-Region-Reason, X-Relay-Shard, X-Transceiver"
PLACEMENT_ATTEMPTS = 2  # a transceiver that refuses or times out is skipped once
RETRY_AFTER_SECONDS = 5


def _cors(response: HttpResponse, request: HttpRequest) -> HttpResponse:
    allowed = settings.CORS_ALLOWED_ORIGINS
    origin = request.headers.get("Origin")
    if origin and ("*" in allowed or origin in allowed):
        response["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if "*" not in allowed:
            response["Vary"] = "Origin"
    return response


def _preflight(request: HttpRequest, methods: str) -> HttpResponse:
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = methods
    response["Access-Control-Allow-Headers"] = "Content-Type, If-Match, Authorization"
    response["Access-Control-Max-Age"] = "600"
    response["Allow"] = methods
    return _cors(response, request)


def _read_offer(request: HttpRequest) -> tuple[str, bool] | HttpResponse:
    """Return ``(sdp, wants_json)`` or the problem response explaining why not."""
    if request.content_type not in ("application/sdp", "application/json"):
        return problem(415, "send an SDP offer as application/sdp (or JSON)", code="unsupported")
    declared = request.headers.get("Content-Length", "0")
    if declared.isdigit() and int(declared) > settings.MAX_SDP_BYTES:
        return problem(413, f"offer larger than {settings.MAX_SDP_BYTES} bytes", code="too_large")
    try:
        body = request.body
    except RequestDataTooBig:
        return problem(413, f"offer larger than {settings.MAX_SDP_BYTES} bytes", code="too_large")
    if len(body) > settings.MAX_SDP_BYTES:
        return problem(413, f"offer larger than {settings.MAX_SDP_BYTES} bytes", code="too_large")
    try:
        text = body.decode("utf-8")
        if request.content_type == "application/json":
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("type") != "offer":
                return problem(400, 'JSON must be {"type": "offer", "sdp": ...}', code="bad_json")
            sdp = data.get("sdp")
            if not isinstance(sdp, str):
                return problem(400, "JSON offer has no sdp string", code="bad_json")
            text = sdp
        validate_offer(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return problem(400, "body is not valid UTF-8 / JSON", code="bad_sdp")
    except ValueError as exc:
        return problem(400, f"bad SDP offer: {exc}", code="bad_sdp")
    return text, request.content_type == "application/json"


class _Refused(Exception):
    """The request ends here with this problem response."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def _place(
    *, client_ip: str | None, pinned: str | None, exclude: list[int], first: bool
) -> tuple[Session, str] | None:
    """One worker-thread hop: rate limit, steer, place and create the session row."""
    if first and rate_limited(client=client_ip or "unknown"):
        raise _Refused(problem(429, "too many offers from this address", code="rate_limited",
                               retry_after=60))
    try:
        ranked = rank_regions_for(client_ip=client_ip, pinned=pinned)
    except SteeringError as exc:
        raise _Refused(problem(400, str(exc), code="unknown_region")) from None
    placement = placement_choose(ranked=ranked, exclude=exclude)
    if placement is None:
        return None
    return services.session_create(placement=placement, client_ip=client_ip)


async def _answer(session: Session, pwd: str, sdp: str) -> str:
    """Ask the session's transceiver for the answer; discard the row when none comes."""
    try:
        return await request_answer(
            transceiver_id=session.transceiver.transceiver_id,
            session_id=str(session.id),
            offer_sdp=sdp,
            ufrag=session.ufrag,
            pwd=pwd,
            relay_public=(session.relay.public_host, session.relay.public_port),
            timeout=settings.CONTROL_TIMEOUT,
        )
    except BaseException:
        await sync_to_async(services.session_discard)(session_id=str(session.id))
        raise


def _created(session: Session, answer: str, wants_json: bool) -> HttpResponse:
    if wants_json:
        response: HttpResponse = JsonResponse(
            {"type": "answer", "sdp": answer, "session_id": str(session.id),
             "region": session.region.code, "region_reason": session.region_reason,
             "relay_shard": session.relay.shard_id,
             "transceiver": session.transceiver.transceiver_id},
            status=201,
        )
    else:
        response = HttpResponse(answer, status=201, content_type="application/sdp")
    response["Location"] = f"/v1/sessions/{session.id}"
    response["ETag"] = f'"{session.etag}"'
    response["X-Region"] = session.region.code
    response["X-Region-Reason"] = session.region_reason
    response["X-Relay-Shard"] = str(session.relay.shard_id)
    response["X-Transceiver"] = str(session.transceiver.transceiver_id)
    return response


async def _create_session(request: HttpRequest) -> HttpResponse:
    parsed = _read_offer(request)
    if isinstance(parsed, HttpResponse):
        return parsed
    sdp, wants_json = parsed
    client_ip = client_ip_of(request)
    refused: list[int] = []
    for attempt in range(PLACEMENT_ATTEMPTS):
        try:
            placed = await sync_to_async(_place)(
                client_ip=client_ip, pinned=request.GET.get("region"), exclude=refused,
                first=attempt == 0,
            )
        except _Refused as exc:
            return exc.response
        if placed is None:
            break
        session, pwd = placed
        try:
            answer = await _answer(session, pwd, sdp)
        except ControlError as exc:
            if exc.code in ("bad_sdp", "no_audio"):
                return problem(400, f"bad SDP offer: {exc.detail}", code=exc.code)
            logger.warning("transceiver %s refused: %s", session.transceiver, exc)
        except ControlTimeout:
            logger.warning("transceiver %s did not answer in time", session.transceiver)
        else:
            session.etag = hashlib.sha256(answer.encode()).hexdigest()[:32]
            await sync_to_async(services.session_mark_answered)(
                session_id=str(session.id), etag=session.etag
            )
            return _created(session, answer, wants_json)
        refused.append(session.transceiver.transceiver_id)
    return problem(503, "no healthy transceiver can take a session now", code="no_capacity",
                   retry_after=RETRY_AFTER_SECONDS)


def session_json(session: Session) -> dict[str, Any]:
    return {
        "id": str(session.id),
        "state": session.state,
        "reason": session.reason,
        "region": session.region.code,
        "region_reason": session.region_reason,
        "relay_shard": session.relay.shard_id,
        "relay_public": f"{session.relay.public_host}:{session.relay.public_port}",
        "transceiver": session.transceiver.transceiver_id,
        "client_ip": session.client_ip,
        "created_at": session.created_at.isoformat(),
        "answered_at": session.answered_at and session.answered_at.isoformat(),
        "connected_at": session.connected_at and session.connected_at.isoformat(),
        "ended_at": session.ended_at and session.ended_at.isoformat(),
    }


@csrf_exempt
async def sessions_collection(request: HttpRequest) -> HttpResponse:
    """``POST /v1/sessions``: SDP offer in, SDP answer out (201)."""
    if request.method == "OPTIONS":
        return _preflight(request, "POST, OPTIONS")
    if request.method != "POST":
        response = problem(405, "POST an SDP offer", code="method_not_allowed")
        response["Allow"] = "POST, OPTIONS"
        return _cors(response, request)
    return _cors(await _create_session(request), request)


@csrf_exempt
async def session_resource(request: HttpRequest, session_id: UUID) -> HttpResponse:
    """``GET`` state / ``DELETE`` end of one session. Trickle ICE (PATCH) is not supported."""
    methods = "GET, DELETE, OPTIONS"
    sid = str(session_id)
    if request.method == "OPTIONS":
        return _preflight(request, methods)
    session = await sync_to_async(session_get)(session_id=sid)
    if session is None:
        return _cors(problem(404, "no such session", code="not_found"), request)
    if request.method == "GET":
        return _cors(JsonResponse(session_json(session)), request)
    if request.method == "DELETE":
        await sync_to_async(services.session_end)(
            session_id=sid, state="ended", reason="deleted by client"
        )
        await request_close(transceiver_id=session.transceiver.transceiver_id, session_id=sid)
        return _cors(HttpResponse(status=200), request)
    response = problem(405, "trickle ICE is not supported; send a complete offer",
                       code="method_not_allowed")
    response["Allow"] = methods
    return _cors(response, request)


def _state_json(node: RelayShard | Transceiver) -> dict[str, Any]:
    """The node's last health transition (issue #4): reason and when."""
    changed = node.state_changed_at
    return {"state_reason": node.state_reason, "state_changed_at": changed and changed.isoformat()}


def region_json(capacity: RegionCapacity, client: LatLon | None) -> dict[str, Any]:
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


def _regions_body(client_ip: str | None) -> dict[str, Any]:
    location = locate_client(client_ip)
    ranked = rank_regions_for(client_ip=client_ip, pinned=None)
    capacities = [region_capacity(region=region) for region, _ in ranked]
    # Usable regions first, each group in steering order: the list a client fails over down.
    capacities.sort(key=lambda c: not c.usable)
    client = location.point if location else None
    return {
        "client": {
            "ip": client_ip,
            "location": None if location is None else {
                "latitude": location.latitude, "longitude": location.longitude,
                "country": location.country_iso_code, "city": location.city_name,
            },
        },
        "regions": [region_json(c, client) for c in capacities],
    }


async def regions_collection(request: HttpRequest) -> HttpResponse:
    """``GET /v1/regions``: every region with status and load, best first for the caller."""
    if request.method == "OPTIONS":
        return _preflight(request, "GET, OPTIONS")
    body = await sync_to_async(_regions_body)(client_ip_of(request))
    return _cors(JsonResponse(body), request)
