"""Whether an edit changes a stored message: the pure rule, apart from the store.

Providers deliver edits late, twice and out of order, and an edit may overtake its
message. The stored message converges to its newest edit whatever the arrival order:

- an edit with the provider's time (Telegram ``edit_date``, VK ``update_time``, WhatsApp
  ``timestamp``) applies only when it is newer than the last edit applied — or, for the
  first edit, not older than the message itself (an edit within the message's own second
  is an edit). A stale or repeated edit changes nothing and adds no history entry;
- an edit without a provider time applies in arrival order, unless its content is the
  message's current content or a text the message had before (a redelivery of an edit
  that was overtaken): the same text never enters the history twice;
- an edit whose content is what the message says already changes nothing.

Times are compared at millisecond precision, the precision MongoDB stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    APPLY = "apply"
    # The message says this already (the edit was applied before, or changes nothing).
    CURRENT = "current"
    # Older than what the message says: ignored.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class StoredText:
    """What the rule needs of a stored message."""

    text: str
    attachments: Sequence[dict[str, Any]] = ()
    # The texts it had before (its ``edits`` history), oldest first.
    history: Sequence[str] = field(default_factory=tuple)
    # When the last applied edit was made (None: never edited) and when it was sent.
    edited_at: datetime | None = None
    sent_at: datetime | None = None


def to_ms(at: datetime) -> datetime:
    """``at`` truncated to the millisecond, as MongoDB stores it."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def verdict(
    stored: StoredText,
    text: str,
    attachments: Sequence[dict[str, Any]],
    edited_at: datetime | None,
) -> Verdict:
    """Whether an edit to ``text`` / ``attachments`` made at the provider's ``edited_at``
    (None: the provider gives no time) changes ``stored``."""
    if text == stored.text and list(attachments) == list(stored.attachments):
        return Verdict.CURRENT
    if edited_at is None:
        return Verdict.STALE if text in stored.history else Verdict.APPLY
    at = to_ms(edited_at)
    if stored.edited_at is not None:
        return Verdict.APPLY if at > to_ms(stored.edited_at) else Verdict.STALE
    if stored.sent_at is not None and at < to_ms(stored.sent_at):
        return Verdict.STALE
    return Verdict.APPLY
