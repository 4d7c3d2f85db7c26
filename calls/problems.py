"""RFC 9457 problem details responses."""

from __future__ import annotations

import json

from django.http import HttpResponse

PROBLEM_TYPE = "application/problem+json"
TITLES = {  # the reason phrases of RFC 9110 section 15
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(status: int, detail: str, *, code: str) -> bytes:
    """The problem+json document; ``code`` is a stable machine-readable slug (``type`` URI tail)."""
    body = {
        "type": f"https://voice-edge.invalid/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return json.dumps(body).encode()


def problem(status: int, detail: str, *, code: str, retry_after: int | None = None) -> HttpResponse:
    """A problem+json response (RFC 9457 §3)."""
    body = problem_body(status, detail, code=code)
    response = HttpResponse(body, status=status, content_type=PROBLEM_TYPE)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response
