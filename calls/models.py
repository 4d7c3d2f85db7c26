"""A WHIP session: one offer/answer, one ufrag, one transceiver, from creation to end."""

from __future__ import annotations

import uuid

from django.db import models


class SessionState(models.TextChoices):
    NEW = "new"  # row created, answer not yet returned
    ANSWERED = "answered"  # answer returned, waiting for ICE/DTLS
    CONNECTED = "connected"
    ENDED = "ended"  # closed by the client or the agent
    FAILED = "failed"  # never connected, or its transceiver died


LIVE_STATES = (SessionState.NEW, SessionState.ANSWERED, SessionState.CONNECTED)
UNCONNECTED_STATES = (SessionState.NEW, SessionState.ANSWERED)  # offered, not (yet) connected


class Session(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state = models.CharField(max_length=16, choices=SessionState.choices, default=SessionState.NEW)
    reason = models.CharField(max_length=200, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    client_key = models.CharField(max_length=64, blank=True)  # rate-limit key: IPv4 or IPv6 /64
    region = models.ForeignKey("geo.Region", on_delete=models.PROTECT, related_name="sessions")
    region_reason = models.CharField(max_length=64, blank=True)
    relay = models.ForeignKey(
        "relays.RelayShard", on_delete=models.PROTECT, related_name="sessions"
    )
    transceiver = models.ForeignKey(
        "transceivers.Transceiver", on_delete=models.PROTECT, related_name="sessions"
    )
    ufrag = models.CharField(max_length=32, unique=True)
    # The transceiver process that answered (its heartbeat's incarnation): a restart fails these.
    transceiver_incarnation = models.CharField(max_length=32, blank=True)
    etag = models.CharField(max_length=64, blank=True)
    # Who created it (both empty: anonymously, authentication off): only that token or the key
    # behind it may act on the session (access.rules.check_session_access).
    api_key = models.ForeignKey(
        "access.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="sessions"
    )
    client_secret = models.ForeignKey(
        "access.ClientSecret", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="sessions",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "transceiver"]),
            models.Index(fields=["client_key", "state"]),
        ]

    def __str__(self) -> str:
        return str(self.id)
