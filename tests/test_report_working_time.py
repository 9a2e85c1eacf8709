"""Working seconds between two instants (crm_store/reports/working_time.py): the
calendar's working hours 09:00–18:00 Moscow time on Russia's working days — weekends,
public holidays (1–8 January, 23 February), a working Saturday moved by decree — and a
brute-force cross-check minute by minute over random spans."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from automation.calendar import WorkingCalendar
from crm_store.reports.working_time import calendar_seconds, working_seconds

MSK = ZoneInfo("Europe/Moscow")
CAL = WorkingCalendar()
H = 3600.0


def msk(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MSK)


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        # inside one working day
        (msk(2026, 4, 14, 10, 0), msk(2026, 4, 14, 12, 30), 2.5),
        # before work to after work: the whole day, 9 hours
        (msk(2026, 4, 14, 6, 0), msk(2026, 4, 14, 23, 0), 9),
        # overnight: 17:00 → next day 10:00 is 1 + 1 hours
        (msk(2026, 4, 14, 17, 0), msk(2026, 4, 15, 10, 0), 2),
        # across a weekend: Friday 17:00 → Monday 10:00
        (msk(2026, 4, 10, 17, 0), msk(2026, 4, 13, 10, 0), 2),
        # entirely on a weekend
        (msk(2026, 4, 11, 10, 0), msk(2026, 4, 12, 17, 0), 0),
        # New Year holidays: 1–11 January 2026 are days off; Monday the 12th works
        (msk(2025, 12, 30, 17, 0), msk(2026, 1, 12, 10, 0), 1 + 1),
        (msk(2026, 1, 2, 10, 0), msk(2026, 1, 8, 17, 0), 0),
        # 23 February 2026 (Monday) is a holiday: Friday 17:00 → Tuesday 10:00
        (msk(2026, 2, 20, 17, 0), msk(2026, 2, 24, 10, 0), 2),
        # Saturday 28 December 2024 was a working day (in exchange for 31 December)
        (msk(2024, 12, 28, 10, 0), msk(2024, 12, 28, 12, 0), 2),
        (msk(2024, 12, 31, 10, 0), msk(2024, 12, 31, 12, 0), 0),
        # a whole working week: 5 × 9 hours
        (msk(2026, 4, 13, 0, 0), msk(2026, 4, 20, 0, 0), 45),
    ],
)
def test_working_seconds(start: datetime, end: datetime, hours: float) -> None:
    assert working_seconds(CAL, start, end) == hours * H


def test_equal_and_reversed_instants() -> None:
    a, b = msk(2026, 4, 14, 17, 0), msk(2026, 4, 15, 10, 0)
    assert working_seconds(CAL, a, a) == 0
    assert working_seconds(CAL, b, a) == -working_seconds(CAL, a, b) == -2 * H
    assert calendar_seconds(b, a) == -17 * H


def test_offset_of_the_inputs_does_not_matter() -> None:
    a, b = msk(2026, 4, 14, 17, 0), msk(2026, 4, 15, 10, 0)
    plus5 = timezone(timedelta(hours=5))
    assert working_seconds(CAL, a.astimezone(UTC), b.astimezone(plus5)) == 2 * H


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        working_seconds(CAL, datetime(2026, 4, 14, 10), msk(2026, 4, 14, 11))


def test_matches_minute_by_minute_brute_force() -> None:
    """Random spans (up to 12 days, around holidays and weekends) against counting each
    minute the calendar calls working time."""
    rng = random.Random(22)
    base = msk(2025, 12, 26, 0, 0)
    for _ in range(25):
        start = base + timedelta(minutes=5 * rng.randrange(0, 12 * 24 * 20))
        end = start + timedelta(minutes=5 * rng.randrange(0, 12 * 24 * 12))
        brute = 0
        t = start
        while t < end:
            if CAL.is_working_time(t):
                brute += 300
            t += timedelta(minutes=5)
        assert working_seconds(CAL, start, end) == brute, (start, end)
