"""Admin login throttling: django-axes' lockout check for logins that come with an HTTP request."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class HttpLoginThrottle(AxesStandaloneBackend):  # type: ignore[misc]
    """axes refuses a locked-out username + address; a login without a request (a script, the
    test client's ``login``) has no address to lock, so it goes on to the next backend."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None,
        password: str | None = None, **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)  # type: ignore[no-any-return]
