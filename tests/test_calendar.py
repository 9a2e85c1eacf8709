"""The working calendar: real Russian production-calendar dates of 2025 and 2026."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automation.calendar import WorkingCalendar
from automation.clock import FakeClock
from automation.durations import Duration, Unit
from config import CalendarFile, WorkingHours

MSK = ZoneInfo("Europe/Moscow")
CAL = WorkingCalendar()


def msk(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MSK)


def add(start: datetime, text: str, cal: WorkingCalendar = CAL) -> datetime:
    result = cal.add(start, Duration.parse(text))
    assert result.tzinfo is UTC
    return result


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        ("30m", 30, Unit.MINUTES),
        ("30 minutes", 30, Unit.MINUTES),
        ("2h", 2, Unit.HOURS),
        ("1 hour", 1, Unit.HOURS),
        ("15d", 15, Unit.DAYS),
        ("3wh", 3, Unit.WORKING_HOURS),
        ("3 working hours", 3, Unit.WORKING_HOURS),
        ("5wd", 5, Unit.WORKING_DAYS),
        ("5  Working  Days", 5, Unit.WORKING_DAYS),
        ("-2h", -2, Unit.HOURS),
        ("- 1 working day", -1, Unit.WORKING_DAYS),
        ("0d", 0, Unit.DAYS),
    ],
)
def test_durations_parse(text: str, amount: int, unit: Unit) -> None:
    d = Duration.parse(text)
    assert (d.amount, d.unit) == (amount, unit)
    assert Duration.parse(str(d)) == d


@pytest.mark.parametrize("text", ["", "2", "h", "2 fortnights", "1.5h", "2 hours ago", "wd5"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        Duration.parse(text)


# --- working days ----------------------------------------------------------------------


def test_the_may_holidays_of_2025() -> None:
    # 1–4 May (1 May, 2 May moved from 4 January, the weekend) and 8–11 May (8 May moved
    # from 23 February, 9 May, the weekend) are days off.
    assert add(msk(2025, 4, 30, 10, 0), "5wd") == msk(2025, 5, 13, 10, 0)
    assert add(msk(2025, 4, 30, 10, 0), "1wd") == msk(2025, 5, 5, 10, 0)
    assert add(msk(2025, 5, 13, 10, 0), "-5wd") == msk(2025, 4, 30, 10, 0)
    for day in (1, 2, 3, 4, 8, 9, 10, 11):
        assert not CAL.is_working_day(date(2025, 5, day)), day
    for day in (5, 6, 7, 12, 13):
        assert CAL.is_working_day(date(2025, 5, day)), day


def test_the_new_year_holidays() -> None:
    # 31 December 2025 is a day off (moved from 5 January); 1–11 January 2026 are off
    # (9 January moved from 3 January), work starts again on Monday 12 January.
    assert add(msk(2025, 12, 30, 12, 0), "1wd") == msk(2026, 1, 12, 12, 0)
    assert add(msk(2025, 12, 29, 12, 0), "2wd") == msk(2026, 1, 12, 12, 0)
    assert add(msk(2026, 1, 12, 12, 0), "-1wd") == msk(2025, 12, 30, 12, 0)
    assert not any(CAL.is_working_day(date(2026, 1, d)) for d in range(1, 12))
    assert add(msk(2025, 12, 30, 17, 0), "3wh") == msk(2026, 1, 12, 11, 0)
    # Between the years of 2024 and 2025 alike: 1–8 January 2025 are off.
    assert add(msk(2024, 12, 28, 10, 0), "1wd") == msk(2025, 1, 9, 10, 0)


def test_a_transferred_working_saturday() -> None:
    # Saturday 1 November 2025 was a working day (the day off moved to Monday 3 November);
    # 4 November is Unity Day.
    assert CAL.is_working_day(date(2025, 11, 1))
    assert not CAL.is_working_day(date(2025, 11, 3))
    assert add(msk(2025, 10, 31, 10, 0), "1wd") == msk(2025, 11, 1, 10, 0)
    assert add(msk(2025, 10, 31, 10, 0), "2wd") == msk(2025, 11, 5, 10, 0)
    assert add(msk(2025, 10, 31, 17, 30), "1wh") == msk(2025, 11, 1, 9, 30)


def test_days_off_moved_in_2025_and_2026() -> None:
    # 13 June 2025 (from 8 March) and 9 January 2026 (from 3 January) are days off;
    # 11 May 2026 is the observed Victory Day (9 May fell on a Saturday).
    assert add(msk(2025, 6, 11, 15, 0), "1wd") == msk(2025, 6, 16, 15, 0)
    assert add(msk(2026, 5, 8, 10, 0), "1wd") == msk(2026, 5, 12, 10, 0)
    assert add(msk(2026, 3, 6, 10, 0), "1wd") == msk(2026, 3, 10, 10, 0)


def test_a_start_outside_working_hours() -> None:
    # After hours on Friday: counted from Monday's start of work.
    assert add(msk(2025, 5, 16, 20, 0), "2wh") == msk(2025, 5, 19, 11, 0)
    assert add(msk(2025, 5, 16, 20, 0), "1wd") == msk(2025, 5, 20, 9, 0)
    # Early in the morning of a working day: from that day's start.
    assert add(msk(2025, 5, 19, 7, 0), "1wh") == msk(2025, 5, 19, 10, 0)
    assert add(msk(2025, 5, 19, 7, 0), "1wd") == msk(2025, 5, 20, 9, 0)
    # In the middle of the May holidays.
    assert add(msk(2025, 5, 3, 12, 0), "1wd") == msk(2025, 5, 6, 9, 0)
    # Backwards from a Sunday: from Friday's end of work.
    assert add(msk(2025, 5, 18, 12, 0), "-2wh") == msk(2025, 5, 16, 16, 0)
    assert add(msk(2025, 5, 18, 12, 0), "-1wd") == msk(2025, 5, 15, 18, 0)


def test_working_hours_cross_days_and_holidays() -> None:
    assert add(msk(2025, 4, 30, 17, 0), "2wh") == msk(2025, 5, 5, 10, 0)
    assert add(msk(2025, 5, 5, 10, 0), "-2wh") == msk(2025, 4, 30, 17, 0)
    # Exactly to the end of the day stays on that day.
    assert add(msk(2025, 5, 19, 17, 0), "1wh") == msk(2025, 5, 19, 18, 0)
    # Three every three working hours: 10, 13, 16, then 10 the next working day.
    t = msk(2025, 5, 19, 10, 0)
    seen = []
    for _ in range(4):
        seen.append(t.astimezone(MSK).strftime("%d %H:%M"))
        t = add(t, "3wh")
    assert seen == ["19 10:00", "19 13:00", "19 16:00", "20 10:00"]
    # A full week of working hours (5 × 9 h) from Monday morning ends Friday evening.
    assert add(msk(2025, 5, 19, 9, 0), "45wh") == msk(2025, 5, 23, 18, 0)


def test_clock_units_ignore_the_calendar() -> None:
    assert add(msk(2025, 5, 1, 23, 30), "45m") == msk(2025, 5, 2, 0, 15)
    assert add(msk(2025, 5, 1, 10, 0), "22h") == msk(2025, 5, 2, 8, 0)
    assert add(msk(2025, 12, 25, 10, 0), "15d") == msk(2026, 1, 9, 10, 0)
    assert add(msk(2025, 5, 1, 10, 0), "-2h") == msk(2025, 5, 1, 8, 0)


def test_time_zone_and_hours_from_the_config() -> None:
    ekb = WorkingCalendar.from_config(
        CalendarFile(
            timezone="Asia/Yekaterinburg",
            working_hours=WorkingHours(start=time(8, 0), end=time(17, 0)),
        )
    )
    # 16:00 Moscow is 18:00 in Yekaterinburg: after hours there, so from 08:00 next day.
    start = msk(2025, 5, 19, 16, 0)
    assert CAL.is_working_time(start)
    assert not ekb.is_working_time(start)
    ekb_9 = datetime(2025, 5, 20, 9, 0, tzinfo=ZoneInfo("Asia/Yekaterinburg"))
    assert add(start, "1wh", ekb) == ekb_9
    assert add(start, "1wh") == msk(2025, 5, 19, 17, 0)


def test_next_daily() -> None:
    # Daily at 10:00, from the evening of 30 April: 1 May (a holiday) counts as a day …
    assert CAL.next_daily(msk(2025, 4, 30, 19, 0), time(10, 0)) == msk(2025, 5, 1, 10, 0)
    # … unless only working days count.
    assert CAL.next_daily(msk(2025, 4, 30, 19, 0), time(10, 0), working_days=True) == msk(
        2025, 5, 5, 10, 0
    )
    assert CAL.next_daily(msk(2025, 5, 5, 9, 0), time(10, 0)) == msk(2025, 5, 5, 10, 0)
    assert CAL.next_daily(msk(2025, 5, 5, 10, 0), time(10, 0)) == msk(2025, 5, 6, 10, 0)


def test_fake_clock() -> None:
    clock = FakeClock(msk(2025, 4, 30, 10, 0))
    assert clock.now() == msk(2025, 4, 30, 10, 0)
    assert clock.advance(hours=2) == msk(2025, 4, 30, 12, 0)
    assert clock.set(msk(2025, 5, 13, 10, 0)) == msk(2025, 5, 13, 10, 0)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(msk(2025, 5, 1, 10, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2025, 1, 1))


# --- properties ------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2024, 12, 1), max_value=datetime(2026, 12, 1), timezones=st.just(MSK)
)


@settings(max_examples=200, deadline=None)
@given(moments, st.integers(min_value=1, max_value=40))
def test_working_days_land_on_working_time_and_go_back(start: datetime, n: int) -> None:
    end = CAL.add_working_days(start, n)
    local = end.astimezone(MSK)
    assert CAL.is_working_day(local.date())
    assert CAL.start <= local.time() <= CAL.end
    assert end > start
    back = CAL.add_working_days(end, -n)
    if CAL.is_working_time(start):
        assert back == start
    # Exactly n working days lie in between (counting the last one).
    days = {
        (start.astimezone(MSK).date() + timedelta(days=i))
        for i in range(1, (local.date() - start.astimezone(MSK).date()).days + 1)
    }
    assert sum(CAL.is_working_day(d) for d in days) >= n


@settings(max_examples=200, deadline=None)
@given(moments, st.integers(min_value=1, max_value=60 * 30))
def test_working_minutes_are_counted_inside_working_hours(start: datetime, minutes: int) -> None:
    end = CAL.add_working_time(start, timedelta(minutes=minutes))
    # Walking minute by minute is the definition; compare with a coarse walk.
    t = CAL.next_working_moment(start)
    counted = timedelta(0)
    while t < end:
        if CAL.is_working_time(t):
            counted += timedelta(minutes=1)
        t += timedelta(minutes=1)
    assert counted == timedelta(minutes=minutes)
    assert CAL.add_working_time(end, -timedelta(minutes=minutes)) == CAL.next_working_moment(start)
