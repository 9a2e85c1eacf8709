"""What numbers and times the operator API takes: only what the store can hold.

MongoDB stores integers in 64 bits and times as milliseconds since 1970 (UTC); Python's
``datetime`` ends at year 9999 in *its own* offset, so ``9999-12-31T23:59:59-23:59`` parses
but cannot be turned into UTC. An input outside these bounds is a 422 naming the field
(pydantic reports the ``ValueError`` raised here), never a 500 from deep in the driver.

- :data:`Int64` — any integer a body or query may carry;
- :data:`Instant` — a time with an offset, between :data:`EARLIEST` and :data:`LATEST`,
  given back in UTC;
- :func:`storable_instant` — the same check for a time read from elsewhere (a cursor).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def storable_instant(value: datetime) -> datetime:
    """``value`` in UTC (a naive one is taken as UTC); ValueError when it lies outside
    [EARLIEST, LATEST] or has no UTC equivalent."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        at = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("the time is out of range") from None
    if not EARLIEST <= at <= LATEST:
        raise ValueError(
            f"the time must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}"
        )
    return at


Instant = Annotated[AwareDatetime, AfterValidator(storable_instant)]
