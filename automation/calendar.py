"""The working calendar: when people work, and arithmetic in working time.

Working days follow the production calendar of the configured country (``holidays``:
Russia's public holidays, the days off moved onto weekdays, and the Saturdays made
working days in exchange); working hours and the time zone come from
``config/calendar.yaml``. Pre-holiday shortened days (an hour less) are not modelled.

Arithmetic (all results are UTC, all inputs timezone-aware):

- minutes, hours: clock time;
- days: calendar days on the local wall clock (same local time of day);
- working hours: the time is moved to the next working moment (a start before the working
  day, after it, or on a day off counts from the next start of work), then counted only
  inside working hours — 17:00 + 2 working hours is 10:00 on the next working day;
- working days: the time is moved to the next working moment likewise, then the date moves
  by that many working days, keeping the time of day — 2025-04-30 10:00 + 5 working days
  is 2025-05-13 10:00 (1–4 and 8–11 May are days off).

Negative amounts count backwards the same way (a start after hours counts from that day's
end of work).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from automation.durations import Duration, Unit
from config.models import CalendarFile

# A calendar without a working day in ten years is a configuration error, not a loop.
MAX_DAYS = 3660


@lru_cache(maxsize=8)
def _country_holidays(country: str) -> holidays.HolidayBase:
    return holidays.country_holidays(country)


class WorkingCalendar:
    def __init__(
        self,
        timezone: str = "Europe/Moscow",
        start: time = time(9, 0),
        end: time = time(18, 0),
        country: str = "RU",
    ) -> None:
        if start >= end:
            raise ValueError("the working day must end after it starts")
        self.tz = ZoneInfo(timezone)
        self.start = start
        self.end = end
        self.country = country
        self._holidays = _country_holidays(country)
        self._working: dict[date, bool] = {}

    @classmethod
    def from_config(cls, cal: CalendarFile) -> WorkingCalendar:
        hours = cal.working_hours
        return cls(cal.timezone, hours.start, hours.end, cal.country)

    # --- days ---------------------------------------------------------------------

    def is_working_day(self, day: date) -> bool:
        known = self._working.get(day)
        if known is None:
            known = self._working[day] = bool(self._holidays.is_working_day(day))
        return known

    def working_day_after(self, day: date, step: int = 1) -> date:
        """The next working day after ``day`` (``step=-1``: the previous one)."""
        for _ in range(MAX_DAYS):
            day += timedelta(days=step)
            if self.is_working_day(day):
                return day
        raise ValueError(f"no working day within {MAX_DAYS} days of {day}")

    def shift_working_days(self, day: date, n: int) -> date:
        step = 1 if n > 0 else -1
        for _ in range(abs(n)):
            day = self.working_day_after(day, step)
        return day

    # --- local time ---------------------------------------------------------------

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz)

    def at(self, day: date, clock: time) -> datetime:
        """``day`` at local time ``clock``, as UTC."""
        return datetime.combine(day, clock, self.tz).astimezone(UTC)

    def day_start(self, day: date) -> datetime:
        return self.at(day, self.start)

    def day_end(self, day: date) -> datetime:
        return self.at(day, self.end)

    def is_working_time(self, when: datetime) -> bool:
        day = self.local(when).date()
        return self.is_working_day(day) and self.day_start(day) <= when < self.day_end(day)

    def next_working_moment(self, when: datetime) -> datetime:
        """``when`` if it is working time, else the next start of work."""
        day = self.local(when).date()
        if self.is_working_day(day):
            if when < self.day_start(day):
                return self.day_start(day)
            if when < self.day_end(day):
                return when.astimezone(UTC)
        return self.day_start(self.working_day_after(day))

    def previous_working_moment(self, when: datetime) -> datetime:
        """``when`` if it is working time (or a day's end), else the last end of work."""
        day = self.local(when).date()
        if self.is_working_day(day):
            if when > self.day_end(day):
                return self.day_end(day)
            if when > self.day_start(day):
                return when.astimezone(UTC)
        return self.day_end(self.working_day_after(day, -1))

    # --- arithmetic ---------------------------------------------------------------

    def add(self, when: datetime, duration: Duration) -> datetime:
        n = duration.amount
        if duration.unit is Unit.MINUTES:
            return (when + timedelta(minutes=n)).astimezone(UTC)
        if duration.unit is Unit.HOURS:
            return (when + timedelta(hours=n)).astimezone(UTC)
        if duration.unit is Unit.DAYS:
            # Local wall clock: the same time of day n days later.
            return (self.local(when) + timedelta(days=n)).astimezone(UTC)
        if duration.unit is Unit.WORKING_HOURS:
            return self.add_working_time(when, timedelta(hours=n))
        return self.add_working_days(when, n)

    def add_working_time(self, when: datetime, amount: timedelta) -> datetime:
        """``when`` plus (or minus) ``amount`` of working time."""
        if amount == timedelta(0):
            return when.astimezone(UTC)
        if amount > timedelta(0):
            t = self.next_working_moment(when)
            left = amount
            for _ in range(MAX_DAYS):
                day = self.local(t).date()
                room = self.day_end(day) - t
                if left <= room:
                    return t + left
                left -= room
                t = self.day_start(self.working_day_after(day))
        else:
            t = self.previous_working_moment(when)
            left = -amount
            for _ in range(MAX_DAYS):
                day = self.local(t).date()
                room = t - self.day_start(day)
                if left <= room:
                    return t - left
                left -= room
                t = self.day_end(self.working_day_after(day, -1))
        raise ValueError(f"{amount} of working time does not fit in {MAX_DAYS} days")

    def add_working_days(self, when: datetime, n: int) -> datetime:
        """``n`` working days later (earlier, if negative), same local time of day."""
        if n == 0:
            return when.astimezone(UTC)
        t = self.next_working_moment(when) if n > 0 else self.previous_working_moment(when)
        local = self.local(t)
        day = self.shift_working_days(local.date(), n)
        return self.at(day, local.time().replace(tzinfo=None))

    def next_daily(self, after: datetime, clock: time, *, working_days: bool = False) -> datetime:
        """The first local ``clock`` time strictly after ``after`` (on a working day, if
        ``working_days``)."""
        day = self.local(after).date()
        for _ in range(MAX_DAYS):
            candidate = self.at(day, clock)
            if candidate > after and (not working_days or self.is_working_day(day)):
                return candidate
            day += timedelta(days=1)
        raise ValueError(f"no working day within {MAX_DAYS} days of {after}")
