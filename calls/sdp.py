"""Cheap checks on an SDP offer before any transceiver sees it (RFC 8866 / RFC 8829)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_AUDIO_SECTIONS = 1  # one voice per session: the agent hears one caller


@dataclass(frozen=True, slots=True)
class OfferSummary:
    media: tuple[str, ...]  # m-line kinds in order, e.g. ("audio",)
    has_ice_credentials: bool
    has_fingerprint: bool


def summarize_offer(text: str) -> OfferSummary:
    """Validate the shape of an SDP offer; ``ValueError`` with a short reason when unusable."""
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError("sdp must start with v=0")
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise ValueError("malformed sdp line")
    media = tuple(line[2:].split(" ", 1)[0] for line in lines if line.startswith("m="))
    if "audio" not in media:
        raise ValueError("offer has no audio m-line")
    if media.count("audio") > MAX_AUDIO_SECTIONS:
        raise ValueError(f"at most {MAX_AUDIO_SECTIONS} audio section per session")
    return OfferSummary(
        media=media,
        has_ice_credentials=any(line.startswith("a=ice-ufrag:") for line in lines)
        and any(line.startswith("a=ice-pwd:") for line in lines),
        has_fingerprint=any(line.startswith("a=fingerprint:") for line in lines),
    )


def validate_offer(text: str) -> OfferSummary:
    """``summarize_offer`` plus what WebRTC requires: ICE credentials and a DTLS fingerprint."""
    summary = summarize_offer(text)
    if not summary.has_ice_credentials:
        raise ValueError("offer has no ice-ufrag/ice-pwd")
    if not summary.has_fingerprint:
        raise ValueError("offer has no dtls fingerprint")
    return summary
