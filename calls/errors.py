"""Why an offer is refused: domain errors the offer service raises and the views map to HTTP."""

from __future__ import annotations


class OfferRefused(Exception):
    """The offer ends here; ``code`` is the stable slug clients see, ``detail`` says why."""

    code = "refused"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class RateLimited(OfferRefused):
    """Too many offers (or too many unconnected sessions) from this client."""

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, code: str = "rate_limited") -> None:
        super().__init__(detail, retry_after=retry_after)
        self.code = code


class UnknownRegion(OfferRefused):
    """``?region=`` names a region that does not exist."""

    code = "unknown_region"


class BadOffer(OfferRefused):
    """The SDP offer cannot be used (shape, or refused by the transceiver's WebRTC stack)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class NoCapacity(OfferRefused):
    """No healthy transceiver can take a session now."""

    code = "no_capacity"


class Unavailable(OfferRefused):
    """A backing service (Redis, the database) does not answer: try again shortly."""

    code = "unavailable"
