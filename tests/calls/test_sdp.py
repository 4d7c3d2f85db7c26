import pytest

from calls.sdp import summarize_offer, validate_offer

OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdefghijkl",
    "a=fingerprint:sha-256 00:11", "a=rtpmap:111 opus/48000/2", "",
])


def test_valid_offer() -> None:
    summary = validate_offer(OFFER)
    assert summary.media == ("audio",)
    assert summary.has_ice_credentials and summary.has_fingerprint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "sdp must start with v=0"),
        ("hello", "sdp must start with v=0"),
        ("v=0\r\nnot a line\r\n", "malformed sdp line"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "offer has no audio m-line"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize_offer(text)


def test_validate_requires_credentials_and_fingerprint() -> None:
    with pytest.raises(ValueError, match="ice-ufrag"):
        validate_offer(OFFER.replace("a=ice-ufrag:abcd\r\n", ""))
    with pytest.raises(ValueError, match="fingerprint"):
        validate_offer(OFFER.replace("a=fingerprint:sha-256 00:11\r\n", ""))
