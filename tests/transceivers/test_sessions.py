"""Offer/answer SDP rules of a transceiver session (pure string functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from transceivers.sessions import (
    answer_candidates,
    is_relay_only_answer,
    parse_offer,
    strip_candidates,
)

DATA = Path(__file__).parent / "data"
CHROME_OFFER = (DATA / "offer_chrome.sdp").read_bytes().decode()


def test_strip_drops_candidates_and_end_of_candidates_only() -> None:
    stripped = strip_candidates(CHROME_OFFER)
    assert "a=candidate" not in stripped and "a=end-of-candidates" not in stripped
    assert ".local" not in stripped
    removed = set(CHROME_OFFER.splitlines()) - set(stripped.splitlines())
    assert len(removed) == 3
    assert stripped.endswith("\r\n") and "\n" not in stripped.replace("\r\n", "")
    assert strip_candidates(stripped) == stripped


def test_parse_offer_accepts_the_stripped_chrome_offer() -> None:
    description = parse_offer(strip_candidates(CHROME_OFFER))
    assert [m.kind for m in description.media] == ["audio"]
    assert description.media[0].ice_candidates == []


def test_parse_offer_without_audio() -> None:
    video_only = CHROME_OFFER.replace("m=audio 9", "m=video 9")
    with pytest.raises(ValueError, match="no audio"):
        parse_offer(video_only)


def test_parse_offer_with_rejected_audio() -> None:
    with pytest.raises(ValueError, match="no audio"):
        parse_offer(CHROME_OFFER.replace("m=audio 9", "m=audio 0"))


@pytest.mark.parametrize("sdp", ["", "hello", "v=0\r\nm=audio x\r\n"])
def test_parse_offer_garbage(sdp: str) -> None:
    with pytest.raises(ValueError, match="bad sdp"):
        parse_offer(sdp)


def test_answer_candidates_and_relay_only_check() -> None:
    relay = ("203.0.113.5", 3478)
    answer = (
        "v=0\r\nm=audio 3478 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:abc 1 udp 2130706431 203.0.113.5 3478 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    assert answer_candidates(answer) == [relay]
    assert is_relay_only_answer(answer, relay)
    leaky = answer + "a=candidate:def 1 udp 2130706431 10.0.0.9 40000 typ host\r\n"
    assert not is_relay_only_answer(leaky, relay)
    assert not is_relay_only_answer("v=0\r\n", relay)
