"""Process-level endpoints: is this signaling process able to serve (database and Redis)? Its
Prometheus metrics. And the error handlers: problem+json under /v1/, Django's pages elsewhere."""

from __future__ import annotations

import hmac

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from calls.metrics import signaling_metrics
from calls.problems import problem
from calls.ratelimit import redis_ping
from fleet.metrics import CONTENT_TYPE, exposition


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        return False
    return True


def _redis_ok() -> bool:
    try:
        redis_ping()
    except redis.RedisError:
        return False
    return True


def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database and Redis answer, else 503 naming the one that does not (``up``
    and load balancers poll it)."""
    db, cache = _database_ok(), _redis_ok()
    body = {"status": "ok" if db and cache else "unavailable",
            "db": "ok" if db else "down", "redis": "ok" if cache else "down"}
    return JsonResponse(body, status=200 if db and cache else 503)


def metrics_authorized(header: str | None, token: str) -> bool:
    """Open without a configured token; else the request must carry ``Bearer <token>``
    (RFC 6750 §2.1), compared in constant time."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: this process's series in the Prometheus text format."""
    if request.method not in ("GET", "HEAD"):
        response = problem(405, "use GET", code="method_not_allowed")
        response["Allow"] = "GET, HEAD"
        return response
    if not metrics_authorized(request.headers.get("Authorization"), settings.METRICS_TOKEN):
        response = problem(401, "send Authorization: Bearer <METRICS_TOKEN>", code="unauthorized")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(signaling_metrics().registry), content_type=CONTENT_TYPE)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/v1/")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: problem+json for the API, Django's page elsewhere."""
    if _is_api(request):
        return problem(400, "bad request", code="bad_request")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler403."""
    if _is_api(request):
        return problem(403, "forbidden", code="forbidden")
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: an unknown API path or malformed id is a problem+json 404 (RFC 9457)."""
    if _is_api(request):
        return problem(404, f"no resource at {request.path}", code="not_found")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: the API still answers problem+json (the traceback stays in the log)."""
    if _is_api(request):
        return problem(500, "internal error", code="internal")
    return defaults.server_error(request)
