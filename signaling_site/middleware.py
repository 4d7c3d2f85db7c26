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
- the CSRF middleware's hooks when ``CSRF_USE_SESSIONS`` keeps the token in the session.

Everything else (the session store and ``request.user`` are lazy: the views that use them
read them on their own thread) is what the stock classes do, in the same order, to the same
request and response. Sync requests (WSGI, the test client) run the stock ``__call__``.
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


class CsrfViewMiddleware(InlineHooks, _Csrf):
    def request_blocks(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    async def process_view(  # type: ignore[override]  # a coroutine: the handler awaits it
            self, request: HttpRequest, callback: Any, callback_args: Any,
            callback_kwargs: Any) -> HttpResponseBase | None:
        if settings.CSRF_USE_SESSIONS:
            return await sync_to_async(_Csrf.process_view, thread_sensitive=True)(
                self, request, callback, callback_args, callback_kwargs)
        return _Csrf.process_view(self, request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooks, _Authentication):
    pass


class MessageMiddleware(InlineHooks, _Message):
    def response_blocks(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooks, _XFrameOptions):
    pass
