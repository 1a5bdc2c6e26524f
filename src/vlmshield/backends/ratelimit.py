"""A thread-safe request-rate limiter: at most ``rate`` starts per second, evenly spaced.

Each :meth:`RateLimiter.wait` reserves the next free slot (slots are ``1 / rate`` seconds apart) and
sleeps until it; threads that call it together are spread out instead of bursting. An idle limiter
does not bank unused slots: after a pause the next call goes at once.

Example:
    >>> limiter = RateLimiter(10.0)        # 10 requests per second
    >>> limiter.wait()                     # returns at once; the next call waits ~0.1 s
    0.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vlmshield.errors import UserInputError


class RateLimiter:
    """At most ``rate`` :meth:`wait` returns per second, across threads.

    Args:
        rate: requests per second (> 0).
        clock: monotonic seconds (for tests).
        sleep: how to wait (for tests).
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise UserInputError(f"a rate limit must be > 0 requests per second, got {rate}")
        self.rate = float(rate)
        self.interval = 1.0 / self.rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until this caller may start; returns how long it waited (seconds)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            self._sleep(delay)
        return delay


__all__ = ["RateLimiter"]
