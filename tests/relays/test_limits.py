from __future__ import annotations

import pytest

from relays.limits import TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=3.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.125)  # half a token
    assert bucket.take(100.25) and not bucket.take(100.25)
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_time_going_backwards_never_mints_tokens() -> None:
    bucket = TokenBucket(rate=10.0, burst=1.0)
    assert bucket.take(50.0) and not bucket.take(10.0) and not bucket.take(50.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (1.0, 0.5)])
def test_bad_limits(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="^rate must be positive and burst at least 1$"):
        TokenBucket(rate=rate, burst=burst)
