"""Working time between two instants, by the working calendar (automation/calendar.py).

Pure arithmetic, no I/O. Only the parts of ``[start, end)`` that lie on a working day of
the calendar's country (weekends, public holidays and moved days off excluded, moved
working Saturdays included) between the start and the end of the working day on the
company's local wall clock count. Both instants must be timezone-aware; the result does
not depend on the offset they are written in.

- equal instants: 0;
- reversed instants (``end`` before ``start``): the negative of the forward span, so
  ``working_seconds(a, b) == -working_seconds(b, a)``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from automation.calendar import WorkingCalendar


def working_seconds(cal: WorkingCalendar, start: datetime, end: datetime) -> float:
    """Seconds of working time in ``[start, end)`` (negative when ``end < start``)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("working_seconds needs timezone-aware instants")
    if end == start:
        return 0.0
    if end < start:
        return -working_seconds(cal, end, start)
    total = timedelta(0)
    day = cal.local(start).date()
    last = cal.local(end).date()
    while day <= last:
        if cal.is_working_day(day):
            lo = max(start, cal.day_start(day))
            hi = min(end, cal.day_end(day))
            if hi > lo:
                total += hi - lo
        day += timedelta(days=1)
    return total.total_seconds()


def calendar_seconds(start: datetime, end: datetime) -> float:
    """Plain elapsed seconds (negative when ``end < start``)."""
    return (end - start).total_seconds()
