"""The engine's notion of "now", injectable so tests advance time instead of sleeping.

Business time (when a timer is due, a task's deadline) comes from a :class:`Clock`.
Leases (how long a process holds a timer or the event cursor) always use the real time:
they are about processes being alive, not about the calendar.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that stands still until told to move."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; returns the new now."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a clock does not go backwards")
        self._now += step
        return self._now

    def set(self, when: datetime) -> datetime:
        """Jump forward to ``when``."""
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError("a clock does not go backwards")
        self._now = when
        return self._now


SYSTEM_CLOCK = SystemClock()
