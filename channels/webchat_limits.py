"""Sliding-window rate limits for the webchat endpoints (pure; the time is passed in).

One :class:`RateLimiter` per process holds, per key (``token:<visitor>``,
``ip:<address>``), the times of the recent hits. A key over its limit is told how many
seconds until a hit falls out of the window (the ``Retry-After``). Keys with no hit in
the window are dropped as they are seen, and all of them once the table grows large.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0
MAX_KEYS = 100_000


@dataclass(slots=True)
class RateLimiter:
    window_s: float = WINDOW_S
    hits: dict[str, deque[float]] = field(default_factory=dict)

    def hit(self, key: str, limit: int, now: float) -> int | None:
        """Count a hit on ``key``; None if within ``limit`` per window, else the
        seconds to wait (the hit is not counted then)."""
        if len(self.hits) > MAX_KEYS:
            self._sweep(now)
        times = self.hits.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= limit:
            return max(1, math.ceil(times[0] + self.window_s - now))
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        cutoff = now - self.window_s
        for key in [k for k, t in self.hits.items() if not t or t[-1] <= cutoff]:
            del self.hits[key]
