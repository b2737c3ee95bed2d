"""When a request has failed or crawls: the tries, the backoff between them, and the slowest transfer that counts.

A transfer slower than SPEED_LIMIT bytes/s over SPEED_TIME seconds is a failed attempt (curl's
--speed-limit/--speed-time); a reply's headers must arrive within SPEED_TIME seconds of the request.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from . import settings
from .errors import TooSlow

SPEED_LIMIT, SPEED_TIME = 1024, 60.0  # defaults of $GPT2HUB_SPEED_LIMIT (bytes/s) and $GPT2HUB_SPEED_TIME (s)
MAX_RETRY_AFTER = 120.0  # seconds; a longer Retry-After is a reason to try another source


def speed_time() -> float:
    """$GPT2HUB_SPEED_TIME, else SPEED_TIME: read when asked, so the environment of that moment counts."""
    return settings.number(settings.SPEED_TIME, SPEED_TIME)


@dataclass(frozen=True)
class RetryPolicy:
    """Tries per range without progress, the exponential backoff (with jitter) between them, and the slowest
    transfer that counts as progress: under `speed_limit` bytes/s for `speed_time` s fails the attempt."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    speed_limit: float | None = None  # None: $GPT2HUB_SPEED_LIMIT, else 1024
    speed_time: float | None = None  # None: $GPT2HUB_SPEED_TIME, else 60

    def min_speed(self) -> tuple[float, float]:
        """(bytes per second, seconds): read when a transfer starts, so the environment of that moment counts."""
        return (self.speed_limit or settings.number(settings.SPEED_LIMIT, SPEED_LIMIT),
                self.speed_time or speed_time())

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        return min(self.cap, self.base * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)


class SpeedCheck:
    """curl's --speed-limit/--speed-time: fewer than limit x time bytes in any window of `time` seconds fails."""

    def __init__(self, url: str, retry: RetryPolicy):
        self.url = url
        self.limit, self.window = retry.min_speed()
        self.t0, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        now = time.monotonic()
        if now - self.t0 >= self.window:
            if self.bytes < self.limit * (now - self.t0):
                raise TooSlow(f"{self.url}: slower than {self.limit:,.0f} bytes/s for {self.window:g} s "
                              f"({self.bytes:,} bytes in {now - self.t0:.1f} s)")
            self.t0, self.bytes = now, 0
