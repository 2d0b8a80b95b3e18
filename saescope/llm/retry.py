"""When to try a failed request again, and how long to wait first.

In: the attempt number and, for a 429/503, the server's `Retry-After` header.
Out: a delay in seconds. Exponential backoff with jitter (half the step fixed,
half random, so clients that failed together do not retry together); a
`Retry-After` in seconds or as an HTTP date is honoured, capped so a server
cannot park a stage for an hour.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# LLMError kinds worth another attempt: the server or the network may recover
RETRYABLE = ("timeout", "connection", "rate_limit", "server", "format")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts after the first; waits `base * 2**attempt` (capped), jittered."""

    retries: int = 5
    base: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 60.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt 0 was the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        step = min(self.base * 2.0**attempt, self.max_delay)
        return step / 2 + (rng or random).uniform(0.0, step / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for: a number, or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)
