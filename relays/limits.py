"""Learning limits: a token bucket (time passed in as ``now``) bounds how fast flows are learned."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; ``take`` spends one if there is one."""

    def __init__(self, *, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, now

    def take(self, now: float) -> bool:
        """Spend one token at ``now``; False when the bucket is empty."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
