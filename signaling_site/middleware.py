"""Django's stock middleware without a thread hop per hook on an ASGI request.

Under ASGI a ``MiddlewareMixin`` runs each of its hooks (``process_request``,
``process_response``; the handler does the same to ``process_view``) through
``sync_to_async``: a round trip to the request's thread and back, ~0.1 ms here (2026-12-01,
idle loop; more when the machine is busy), 13 of them for every request through the stack in
``settings.MIDDLEWARE``, an API offer included, though none of them does anything there but
set headers and lazy attributes.

The classes below are those middlewares with ``InlineHooks``: a hook runs on the event loop
when it does no I/O, which is every hook here except three cases that keep the thread, decided
per request:

- the session middleware's response hook when the session was modified (or
  ``SESSION_SAVE_EVERY_REQUEST``): it saves it to the database;
- the messages middleware's response hook when messages were added or read: storing them may
  load the session from the database;
- the CSRF middleware's view hook when it checks a token (an unsafe method to a view not
  exempt from CSRF: it reads the form, and a refusal renders the failure page), and all its
  hooks when ``CSRF_USE_SESSIONS`` keeps the token in the session.

Everything else (the session store and ``request.user`` are lazy: the views that use them
read them on their own thread) is what the stock classes do, in the same order, to the same
request and response. Sync requests (WSGI, the test client) run the stock hooks.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as _Authentication
from django.contrib.messages.middleware import MessageMiddleware as _Message
from django.contrib.sessions.middleware import SessionMiddleware as _Session
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware as _XFrameOptions
from django.middleware.common import CommonMiddleware as _Common
from django.middleware.csrf import CsrfViewMiddleware as _Csrf
from django.middleware.security import SecurityMiddleware as _Security


class InlineHooks:
    """Mixed in before a ``MiddlewareMixin`` subclass: its async path runs the hooks inline
    unless ``request_blocks`` / ``response_blocks`` say the hook may do I/O for this request."""

    get_response: Any

    def request_blocks(self, request: HttpRequest) -> bool:
        return False

    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        hooks: Any = self
        response = None
        if hasattr(hooks, "process_request"):
            if self.request_blocks(request):
                response = await sync_to_async(hooks.process_request,
                                               thread_sensitive=True)(request)
            else:
                response = hooks.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(hooks, "process_response"):
            if self.response_blocks(request, response):
                response = await sync_to_async(hooks.process_response,
                                               thread_sensitive=True)(request, response)
            else:
                response = hooks.process_response(request, response)
        return response  # type: ignore[no-any-return]


class SecurityMiddleware(InlineHooks, _Security):
    pass


class SessionMiddleware(InlineHooks, _Session):
    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooks, _Common):
    pass


SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")  # the CSRF middleware's (RFC 9110)


class CsrfViewMiddleware(InlineHooks, _Csrf):
    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode:  # the handler takes the view hook as it finds it after __init__
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]

    def request_blocks(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    async def _process_view_async(self, request: HttpRequest, callback: Any, callback_args: Any,
                                  callback_kwargs: Any) -> HttpResponseBase | None:
        """The stock view hook: on the loop where it only accepts (a safe method, a view exempt
        from CSRF such as the API's, a request already checked); on the request's thread where
        it checks a token (it reads the form, and a refusal renders the failure page)."""
        accepts = (getattr(request, "csrf_processing_done", False)
                   or getattr(callback, "csrf_exempt", False) or request.method in SAFE_METHODS)
        if accepts and not settings.CSRF_USE_SESSIONS:
            return _Csrf.process_view(self, request, callback, callback_args, callback_kwargs)
        return await sync_to_async(_Csrf.process_view, thread_sensitive=True)(
            self, request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooks, _Authentication):
    pass


class MessageMiddleware(InlineHooks, _Message):
    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooks, _XFrameOptions):
    pass
