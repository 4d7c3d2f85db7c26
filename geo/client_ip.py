"""The client address of a Django request: the TCP peer, or X-Forwarded-For from a trusted proxy
(RFC 7239 §5.2 semantics; the walk itself is the pure ``geo.client_address``)."""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from geo.client_address import IPNetwork, client_address, parse_trusted_proxies


@functools.cache
def get_trusted_proxies() -> tuple[IPNetwork, ...]:
    """``settings.TRUSTED_PROXIES`` parsed once; ``ImproperlyConfigured`` on a bad CIDR."""
    try:
        return parse_trusted_proxies(list(settings.TRUSTED_PROXIES))
    except ValueError as exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from None


def client_ip_of(request: HttpRequest) -> str | None:
    """The caller's address: the TCP peer, or X-Forwarded-For behind a trusted proxy."""
    peer = request.META.get("REMOTE_ADDR") or ""
    if not peer:
        return None
    return client_address(peer, request.headers.get("X-Forwarded-For"), get_trusted_proxies())
