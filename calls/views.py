"""WHIP endpoints (RFC 9725): POST /v1/sessions, GET/PATCH/DELETE /v1/sessions/<id>,
POST /v1/client_secrets, GET /v1/regions; the API's own description at /v1/openapi.json and
/v1/docs. Thin: parse the request, call one service or selector, map refusals to problem+json.
Every operation but ``OPTIONS``, ``GET /v1/regions`` and the description takes
``Authorization: Bearer`` (RFC 9725 §4.5, RFC 6750)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from access.rules import (
    Credential,
    Denied,
    Owner,
    check_mint,
    check_offer,
    check_session_access,
)
from access.selectors import credential_for_header
from access.services import (
    SECRET_DEFAULT_SECONDS,
    SECRET_MAX_SECONDS,
    SECRET_MIN_SECONDS,
    Minted,
    client_secret_mint,
)
from access.tokens import bearer_challenge
from calls import services
from calls.cors import api_view
from calls.errors import BadOffer, OfferRefused
from calls.metrics import observe_offers
from calls.openapi import openapi_document, openapi_json, operations, websockets
from calls.problems import problem
from calls.ratelimit import redis_ping
from calls.selectors import region_capacity, session_get
from calls.serializers import answer_json, regions_json, session_json
from calls.steering import rank_regions_for
from geo.client_ip import client_ip_of
from geo.geoip import locate_client

OFFER_TYPES = ("application/sdp", "application/json")
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"  # RFC 8840 §9.1
STATUS_OF = {"rate_limited": 429, "too_many_pending": 429, "no_capacity": 503,
             "unavailable": 503}  # every other refusal is the client's: 400


def refused(exc: OfferRefused) -> HttpResponse:
    """The problem+json answer (RFC 9457) for a refused offer."""
    status = STATUS_OF.get(exc.code, 400)
    return problem(status, exc.detail, code=exc.code, retry_after=exc.retry_after)


BEARER_REALM = "voice-edge"


def denied(exc: Denied) -> HttpResponse:
    """401 with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3), or 403 (insufficient
    scope, with the challenge too, §3.1), as problem+json."""
    response = problem(exc.status, exc.detail, code=exc.code)
    response["WWW-Authenticate"] = bearer_challenge(BEARER_REALM, exc.bearer_error, exc.detail)
    return response


async def _caller(request: HttpRequest) -> Credential | None:
    """The request's credential (one indexed read, no cache: revocation counts at once);
    ``Denied`` for a bad token, ``OfferRefused`` (503) when the database does not answer.
    No ``Authorization`` header, no worker-thread hop: an open API's offers do not wait."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return None
    return await services.run_backed(credential_for_header, authorization=authorization)


def _too_large() -> HttpResponse:
    return problem(413, f"body larger than {settings.MAX_SDP_BYTES} bytes", code="too_large")


def _offer_body(request: HttpRequest) -> bytes | HttpResponse:
    """The request body, or 413 when it is (declared or found) larger than an offer may be."""
    declared = request.headers.get("Content-Length", "0")
    if declared.isdigit() and int(declared) > settings.MAX_SDP_BYTES:
        return _too_large()
    try:
        body = request.body
    except RequestDataTooBig:
        return _too_large()
    return _too_large() if len(body) > settings.MAX_SDP_BYTES else body


def parse_offer_envelope(body: bytes, content_type: str) -> str:
    """The SDP text of an ``application/sdp`` body or of ``{"type":"offer","sdp":...}``;
    ``BadOffer`` when it is neither."""
    try:
        text = body.decode("utf-8")
        if content_type != "application/json":
            return text
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadOffer("bad_sdp", "body is not valid UTF-8 / JSON") from None
    except RecursionError:  # the C decoder gives up on deep nesting: no offer looks like that
        raise BadOffer("bad_json", "JSON nested too deeply") from None
    if not isinstance(data, dict) or data.get("type") != "offer":
        raise BadOffer("bad_json", 'JSON must be {"type": "offer", "sdp": ...}')
    if not isinstance(data.get("sdp"), str):
        raise BadOffer("bad_json", "JSON offer has no sdp string")
    return str(data["sdp"])


def _created(result: services.OfferResult, wants_json: bool) -> HttpResponse:
    """201 with the answer and where the session went (RFC 9725 §4.2)."""
    session = result.session
    if wants_json:
        response: HttpResponse = JsonResponse(answer_json(session, result.answer), status=201)
    else:
        response = HttpResponse(result.answer, status=201, content_type="application/sdp")
    response["Location"] = f"/v1/sessions/{session.id}"
    response["ETag"] = f'"{result.etag}"'
    response["X-Region"] = session.region.code
    response["X-Region-Reason"] = session.region_reason
    response["X-Relay-Shard"] = str(session.relay.shard_id)
    response["X-Transceiver"] = str(session.transceiver.transceiver_id)
    return response


@api_view("POST", accept_post=", ".join(OFFER_TYPES))
@observe_offers
async def sessions_collection(request: HttpRequest) -> HttpResponse:
    """``POST /v1/sessions``: SDP offer in, SDP answer out (201)."""
    try:
        caller = await _caller(request)
        check_offer(caller, required=settings.AUTH_REQUIRED, now=timezone.now())  # 401 first
    except Denied as exc:
        return denied(exc)
    except OfferRefused as exc:
        return refused(exc)
    if request.content_type not in OFFER_TYPES:
        return problem(415, "send an SDP offer as application/sdp (or JSON)", code="unsupported")
    body = _offer_body(request)
    if isinstance(body, HttpResponse):
        return body
    try:
        sdp = parse_offer_envelope(body, request.content_type)
        result = await services.session_offer(
            sdp=sdp, client_ip=client_ip_of(request), pinned=request.GET.get("region"),
            caller=caller,
        )
    except Denied as exc:
        return denied(exc)
    except OfferRefused as exc:
        return refused(exc)
    return _created(result, request.content_type == "application/json")


@api_view("GET", "PATCH", "DELETE")
async def session_resource(request: HttpRequest, session_id: UUID) -> HttpResponse:
    """``GET`` state / ``PATCH`` trickle ICE / ``DELETE`` end of one session: only with the
    token that created it or the API key behind it."""
    try:
        caller = await _caller(request)
        session = await sync_to_async(session_get)(session_id=str(session_id))
        if session is None:
            check_session_access(caller, Owner(None, None), required=settings.AUTH_REQUIRED)
            return problem(404, "no such session", code="not_found")
        check_session_access(caller, Owner(session.api_key_id, session.client_secret_id),
                             required=settings.AUTH_REQUIRED)
    except Denied as exc:
        return denied(exc)
    except OfferRefused as exc:
        return refused(exc)
    if request.method == "DELETE":
        await services.session_hang_up(session=session, reason="deleted by client")
        return HttpResponse(status=200)
    if request.method == "PATCH":
        return _trickle(request, session.etag)
    user = await request.auser()
    return JsonResponse(session_json(session, with_client_ip=user.is_staff))


ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+\Z")  # RFC 8839 §5.4 ice-char
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")  # RFC 8839 §5.1 cand-type


@dataclass(frozen=True, slots=True)
class TrickleFragment:
    """What a trickle PATCH body says: its candidates and whether gathering is over."""

    candidates: tuple[str, ...]
    end_of_candidates: bool


def _check_candidate(value: str) -> None:
    """RFC 8839 §5.1: foundation component transport priority address port typ cand-type."""
    fields = value.split()
    if len(fields) < 8 or fields[6] != "typ" or fields[7] not in CANDIDATE_TYPES:
        raise ValueError("malformed candidate")
    if not (fields[1].isdigit() and fields[3].isdigit() and fields[5].isdigit()):
        raise ValueError("malformed candidate")
    if not 1 <= int(fields[1]) <= 256 or int(fields[5]) > 65535:
        raise ValueError("malformed candidate")


def parse_trickle_fragment(text: str) -> TrickleFragment:
    """Check an ``application/trickle-ice-sdpfrag`` body (RFC 8840 §4); ``ValueError`` with a
    short reason when malformed. Unknown attributes are ignored (RFC 8866 §5.13)."""
    candidates: list[str] = []
    end = False
    for line in (raw.rstrip("\r") for raw in text.split("\n")):
        if not line:
            continue
        if len(line) < 3 or line[1] != "=" or line[0] not in "am":
            raise ValueError("malformed sdpfrag line")
        if line[0] == "m":
            if len(line[2:].split()) < 4:  # RFC 8866 §5.14: media port proto fmt
                raise ValueError("malformed m-line")
            continue
        name, _, value = line[2:].partition(":")
        if name == "candidate":
            _check_candidate(value)
            candidates.append(value)
        elif name == "end-of-candidates":
            end = True
        elif name in ("ice-ufrag", "ice-pwd") and not ICE_CHARS.match(value):
            raise ValueError(f"malformed {name}")
    return TrickleFragment(tuple(candidates), end)


def if_match_status(header: str | None, etag: str) -> int | None:
    """The refusal for a PATCH's ``If-Match`` (RFC 9725 §4.3), or None when it matches:
    428 without one (RFC 6585 §3), 422 for ``*`` (an ICE restart: not supported, §4.3.2),
    412 when no listed strong tag is the session's (RFC 9110 §13.1.1)."""
    if header is None or not header.strip():
        return 428
    tags = [tag.strip() for tag in header.split(",")]
    if "*" in tags:
        return 422
    return None if etag and f'"{etag}"' in tags else 412


IF_MATCH_REFUSALS = {
    428: ("send If-Match with the session's ETag", "precondition_required"),
    422: ("ICE restart is not supported", "ice_restart_unsupported"),
    412: ("If-Match does not match the session's ETag", "precondition_failed"),
}


def _trickle(request: HttpRequest, etag: str) -> HttpResponse:
    """``PATCH`` with a trickle ICE fragment (RFC 9725 §4.3.1): checked, then 204. The
    candidates are not used: the relay learns the caller's address from its checks."""
    if request.content_type != TRICKLE_TYPE:
        return problem(415, f"send {TRICKLE_TYPE}", code="unsupported")
    refusal = if_match_status(request.headers.get("If-Match"), etag)
    if refusal is not None:
        detail, code = IF_MATCH_REFUSALS[refusal]
        return problem(refusal, detail, code=code)
    body = _offer_body(request)
    if isinstance(body, HttpResponse):
        return body
    try:
        parse_trickle_fragment(body.decode("utf-8"))
    except UnicodeDecodeError:
        return problem(400, "body is not valid UTF-8", code="bad_sdpfrag")
    except ValueError as exc:
        return problem(400, str(exc), code="bad_sdpfrag")
    response = HttpResponse(status=204)
    response["ETag"] = f'"{etag}"'
    return response


def parse_expires_after(body: bytes) -> int:
    """Seconds a client secret should live, from ``{"expires_after": {"seconds": N}}`` (OpenAI's
    shape; an empty body: the default); ``ValueError`` with a short reason."""
    if not body.strip():
        return SECRET_DEFAULT_SECONDS
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    expires = data.get("expires_after", {})
    if not isinstance(expires, dict):
        raise ValueError("expires_after must be an object")
    if expires.get("anchor", "created_at") != "created_at":
        raise ValueError('expires_after.anchor must be "created_at"')
    seconds = expires.get("seconds", SECRET_DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ValueError("expires_after.seconds must be an integer")
    if not SECRET_MIN_SECONDS <= seconds <= SECRET_MAX_SECONDS:
        raise ValueError(
            f"expires_after.seconds must be {SECRET_MIN_SECONDS}..{SECRET_MAX_SECONDS}"
        )
    return seconds


def minted_json(minted: Minted) -> dict[str, Any]:
    """``{"value", "expires_at"}`` (unix seconds), the shape OpenAI's client secrets have."""
    expires_at = int(minted.expires_at.timestamp()) if minted.expires_at else None
    return {"value": minted.value, "expires_at": expires_at}


@api_view("POST")
async def client_secrets_collection(request: HttpRequest) -> HttpResponse:
    """``POST /v1/client_secrets`` with an API key: a short-lived secret that may only create
    sessions (a browser's token)."""
    try:
        caller = check_mint(await _caller(request))
        if request.content_type not in ("application/json", "") and request.body.strip():
            return problem(415, "send application/json", code="unsupported")
        seconds = parse_expires_after(request.body)
        minted = await services.run_backed(client_secret_mint, credential=caller, seconds=seconds)
    except Denied as exc:
        return denied(exc)
    except OfferRefused as exc:
        return refused(exc)
    except ValueError as exc:
        return problem(400, str(exc), code="bad_request")
    except RequestDataTooBig:
        return _too_large()
    return JsonResponse(minted_json(minted))


def _regions_body(client_ip: str | None) -> dict[str, Any]:
    redis_ping()  # fail within the signaling timeout, not one per region read
    ranked = rank_regions_for(client_ip=client_ip, pinned=None)
    capacities = [region_capacity(region=region) for region, _ in ranked]
    # Usable regions first, each group in steering order: the list a client fails over down.
    capacities.sort(key=lambda c: not c.usable)
    return regions_json(client_ip, locate_client(client_ip), capacities)


@api_view("GET")
async def regions_collection(request: HttpRequest) -> HttpResponse:
    """``GET /v1/regions``: every region with status and load, best first for the caller."""
    try:
        body = await services.run_backed(_regions_body, client_ip=client_ip_of(request))
    except OfferRefused as exc:
        return refused(exc)
    return JsonResponse(body)


@api_view("GET")
async def openapi_view(request: HttpRequest) -> HttpResponse:
    """``GET /v1/openapi.json``: the OpenAPI 3.1 document of this API (``calls/openapi.yaml``)."""
    return HttpResponse(openapi_json(), content_type="application/json")


@api_view("GET")
async def docs_page(request: HttpRequest) -> HttpResponse:
    """``GET /v1/docs``: the same document for people, rendered here (no script, no CDN)."""
    document = openapi_document()
    return render(request, "api_docs.html", {
        "info": document["info"], "operations": operations(document),
        "sockets": websockets(document),
    })
