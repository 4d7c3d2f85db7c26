"""``fleet.periodic``: the one interval + backoff rule the daemons' background loops share."""

from __future__ import annotations

import asyncio

import pytest

from fleet.periodic import MAX_BACKOFF, MIN_BACKOFF, every, next_delay


@pytest.mark.parametrize(
    ("delay", "interval", "failed", "max_backoff", "expected"),
    [
        (1.0, 1.0, False, MAX_BACKOFF, 1.0),  # success: back to the interval
        (0.0, 0.0, True, MAX_BACKOFF, MIN_BACKOFF),  # an event-paced loop still waits
        (0.05, 0.05, True, MAX_BACKOFF, MIN_BACKOFF),
        (1.0, 1.0, True, MAX_BACKOFF, 2.0),
        (4.0, 1.0, True, MAX_BACKOFF, MAX_BACKOFF),
        (1.0, 1.0, True, 1.0, 1.0),  # max_backoff == interval: a fixed period
        (5.0, 10.0, True, MAX_BACKOFF, 10.0),  # never shorter than the interval
    ],
)
def test_next_delay(delay: float, interval: float, failed: bool, max_backoff: float,
                    expected: float) -> None:
    assert next_delay(delay, interval=interval, failed=failed, max_backoff=max_backoff) == expected


async def test_every_backs_off_on_errors_and_recovers() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []
    errors: list[BaseException] = []
    lags: list[float] = []

    async def work() -> None:
        runs.append(loop.time())
        if len(runs) <= 3:
            raise OSError("down")

    start = loop.time()
    await asyncio.wait_for(every(
        0.01, work, errors=(OSError,), stopping=lambda: len(runs) >= 6,
        on_error=errors.append, on_lag=lags.append,
    ), timeout=5)
    gaps = [b - a for a, b in zip([start, *runs], runs, strict=False)]
    assert len(errors) == 3 and all(str(e) == "down" for e in errors)
    assert gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[3] >= 0.4  # 0.1, 0.2, 0.4 after errors
    assert gaps[4] < 0.2 and len(lags) == 6 and min(lags) >= 0.0  # then the interval again


async def test_other_errors_propagate() -> None:
    async def work() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await every(0.0, work, errors=(OSError,), stopping=lambda: False,
                    on_error=lambda exc: None)
