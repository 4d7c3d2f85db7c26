"""Offer/answer SDP rules of a transceiver session (pure string functions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioice.candidate import candidate_priority

from transceivers.sdp import (
    add_tcp_candidate,
    answer_candidates,
    is_relay_only_answer,
    parse_offer,
    strip_candidates,
    tcp_candidate_priority,
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


def test_tcp_candidate_follows_the_udp_one_with_rfc_6544_priority() -> None:
    relay = ("203.0.113.5", 3478)
    answer = (
        "v=0\r\nm=audio 3478 UDP/TLS/RTP/SAVPF 111\r\n"
        f"a=candidate:abc 1 udp {candidate_priority(1, 'host')} 203.0.113.5 3478 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    with_tcp = add_tcp_candidate(answer, relay, 443)
    lines = with_tcp.splitlines()
    assert lines[2].startswith("a=candidate:abc 1 udp ")
    tcp = lines[3].split()
    assert tcp[1:] == ["1", "tcp", str(tcp_candidate_priority()), "203.0.113.5", "443", "typ",
                       "host", "tcptype", "passive"]
    assert lines[4] == "a=end-of-candidates"
    # RFC 8445 5.1.2.1: (2^24)type + (2^8)local + (256 - component); RFC 6544 4.2 local pref
    assert tcp_candidate_priority() == (125 << 24) + (((4 << 13) + 8191) << 8) + 255
    assert candidate_priority(1, "host") > tcp_candidate_priority()  # UDP preferred
    assert tcp[0] != "abc"  # its own foundation (another transport)
    assert is_relay_only_answer(with_tcp, relay, 443)
    assert not is_relay_only_answer(with_tcp, relay)  # a TCP port nobody asked for
    assert not is_relay_only_answer(with_tcp, relay, 444)
    assert add_tcp_candidate(answer.replace("203.0.113.5 3478", "10.0.0.1 3478"), relay, 443) == (
        answer.replace("203.0.113.5 3478", "10.0.0.1 3478"))
