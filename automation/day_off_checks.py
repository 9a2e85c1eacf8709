"""``check-config``'s warning about offsets in calendar days (pure).

A delay (``after``, ``every``) of a rule that creates a task, or a task ``deadline``, of
whole calendar days lands on
whatever weekday it lands on: the kitchen shop's control call "3 days after assembly" on a
Sunday, a task due on a holiday. Where that is meant, nothing needs changing; where the
company works on working days, the duration language says so: ``3wd`` (3 working days,
automation/durations.py). :func:`day_off_warnings` names every such place.
"""

from __future__ import annotations

from collections.abc import Iterator

from automation.durations import Duration, Unit
from automation.rules import Rule
from config.models import AppConfig


def _calendar_days(rule: Rule) -> Iterator[tuple[str, Duration]]:
    """The delays of a rule that creates a task (the task is due then), and its tasks'
    deadlines. A rule that only notifies (an escalation after 15 days) lands no work."""
    if any(a.create_task is not None for a in rule.do):
        for name in ("after", "every"):
            d: Duration | None = getattr(rule, name)
            if d is not None:
                yield name, d
    for i, action in enumerate(rule.do):
        task = action.create_task
        if task is not None and task.deadline is not None:
            yield f"do[{i}].create_task.deadline", task.deadline


def day_off_warnings(config: AppConfig) -> list[tuple[str, str]]:
    """(level, text) for each delay or deadline of one or more calendar days."""
    out: list[tuple[str, str]] = []
    for rule in config.automation.rules:
        for where, d in _calendar_days(rule):
            if d.unit is Unit.DAYS and d.amount >= 1:
                out.append(
                    (
                        "warning",
                        f"rule {rule.id}: {where} {d} counts calendar days and can land on "
                        f"a day off (a Sunday, a holiday); if working days are meant, write "
                        f"{d.amount}wd ({d.amount} working days)",
                    )
                )
    return out
