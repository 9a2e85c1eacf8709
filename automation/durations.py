"""Durations of the rule language: ``30m``, ``2h``, ``3 working hours``, ``5wd``, ``15 days``.

A duration is a whole number of one unit; the working units are counted on the working
calendar (:mod:`automation.calendar`), the others on the clock. A leading ``-`` makes it
negative (only offsets from a date field use that: "two hours before the shipping date").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema


class Unit(StrEnum):
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    WORKING_HOURS = "working hours"
    WORKING_DAYS = "working days"

    @property
    def working(self) -> bool:
        return self in (Unit.WORKING_HOURS, Unit.WORKING_DAYS)


_UNITS: dict[str, Unit] = {
    "m": Unit.MINUTES,
    "min": Unit.MINUTES,
    "minute": Unit.MINUTES,
    "minutes": Unit.MINUTES,
    "h": Unit.HOURS,
    "hour": Unit.HOURS,
    "hours": Unit.HOURS,
    "d": Unit.DAYS,
    "day": Unit.DAYS,
    "days": Unit.DAYS,
    "wh": Unit.WORKING_HOURS,
    "working hour": Unit.WORKING_HOURS,
    "working hours": Unit.WORKING_HOURS,
    "wd": Unit.WORKING_DAYS,
    "working day": Unit.WORKING_DAYS,
    "working days": Unit.WORKING_DAYS,
}
_SHORT = {
    Unit.MINUTES: "m",
    Unit.HOURS: "h",
    Unit.DAYS: "d",
    Unit.WORKING_HOURS: "wh",
    Unit.WORKING_DAYS: "wd",
}
_PATTERN = re.compile(r"^\s*([+-]?)\s*(\d{1,6})\s*([a-z ]+?)\s*$")
FORMS = "30m, 2h, 3wh, 15d, 5wd (or: 30 minutes, 2 hours, 3 working hours, 15 days, 5 working days)"


@dataclass(frozen=True, slots=True)
class Duration:
    amount: int
    unit: Unit

    @classmethod
    def parse(cls, text: str) -> Duration:
        m = _PATTERN.match(text.lower())
        unit = _UNITS.get(" ".join(m.group(3).split())) if m else None
        if m is None or unit is None:
            raise ValueError(f"not a duration: {text!r}; write it like {FORMS}")
        amount = int(m.group(2))
        return cls(-amount if m.group(1) == "-" else amount, unit)

    @property
    def negative(self) -> bool:
        return self.amount < 0

    def __str__(self) -> str:
        return f"{self.amount}{_SHORT[self.unit]}"


def _parse(value: Any) -> Any:
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is text like {FORMS}")
    return Duration.parse(value)


#: A duration field of a pydantic model (written as text, e.g. ``"5wd"``).
DurationField = Annotated[
    Duration,
    PlainValidator(_parse),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["30m", "2h", "3wh", "15d", "5wd"]}),
]
