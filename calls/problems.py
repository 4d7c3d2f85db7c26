"""RFC 9457 problem details responses."""

from __future__ import annotations

import json

from django.http import HttpResponse

PROBLEM_TYPE = "application/problem+json"
TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, *, code: str, retry_after: int | None = None) -> HttpResponse:
    """A problem+json response; ``code`` is a stable machine-readable slug (``type`` URI tail)."""
    body = {
        "type": f"https://voice-edge.invalid/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    response = HttpResponse(json.dumps(body), status=status, content_type=PROBLEM_TYPE)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response
