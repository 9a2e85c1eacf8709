"""A scenario's expectations checked against the :class:`~automation.scenario.world.World`
(pure). Each failed check says what was expected and what was found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from automation.scenario.model import (
    EntityCheck,
    Expectation,
    NotificationCheck,
    SentCheck,
    TaskCheck,
)
from automation.scenario.world import World

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    what: str
    found: str
    quote: str | None


def _local(value: object, tz: ZoneInfo) -> str | None:
    from datetime import datetime

    if not isinstance(value, datetime):
        return None
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _entity(kind: str, c: EntityCheck, w: World) -> tuple[bool, str, str]:
    docs = w.of(c.of, kind, c.pipeline)
    where = f" in {c.pipeline}" if c.pipeline else ""
    if c.count is not None:
        return len(docs) == c.count, f"{c.of} has {c.count} {kind}(s){where}", f"{len(docs)}"
    if not docs:
        return False, f"{c.of} has a {kind}{where}", "none"
    d = docs[-1]
    want: dict[str, Any] = {}
    got: dict[str, Any] = {}
    plain: tuple[tuple[str, str, object], ...] = (
        ("stage", "stage_id", c.stage),
        ("responsible", "responsible_id", c.responsible),
        ("open", "open", c.open),
    )
    for key, field, value in plain:
        if value is not None:
            want[key], got[key] = value, d.get(field)
    for name, value in c.fields.items():
        want[name], got[name] = value, (d.get("fields") or {}).get(name, d.get(name))
    ok = all(_same(want[k], got[k]) for k in want)
    return ok, f"{c.of}'s {kind}{where}: {want}", f"{got}"


def _same(want: object, got: object) -> bool:
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(want) == float(got)
    return want == got


def _tasks(c: TaskCheck, w: World, tz: ZoneInfo) -> tuple[bool, str, str]:
    found = [t for t in w.tasks if c.title.lower() in str(t.get("title", "")).lower()]
    if c.assignee is not None:
        found = [t for t in found if t.get("assignee_id") == c.assignee]
    if c.status is not None:
        found = [t for t in found if t.get("status") == c.status]
    what = f"task «{c.title}»" + "".join(
        f" {k}={v}"
        for k, v in (("assignee", c.assignee), ("status", c.status), ("due", c.due))
        if v
    )
    if c.count is not None:
        return len(found) == c.count, f"{c.count} × {what}", f"{len(found)}"
    if not found:
        titles = [str(t.get("title")) for t in w.tasks]
        return False, what, f"tasks: {titles}"
    if c.due is not None:
        dues = [_local(t.get("deadline"), tz) for t in found]
        return c.due in dues, what, f"due {dues}"
    return True, what, "found"


def _notified(c: NotificationCheck, w: World) -> tuple[bool, str, str]:
    found = [
        n
        for n in w.notifications
        if n.get("user_id") == c.to and c.text.lower() in str(n.get("text", "")).lower()
    ]
    what = f"{c.to} told «{c.text}»"
    if c.count is not None:
        return len(found) == c.count, f"{c.count} × {what}", f"{len(found)}"
    texts = [str(n.get("text")) for n in w.notifications if n.get("user_id") == c.to]
    return bool(found), what, "found" if found else f"{c.to}'s notifications: {texts}"


def _sent(c: SentCheck, w: World) -> tuple[bool, str, str]:
    ids = set(w.contacts.get(c.to, []))
    mine = [m for m in w.outbound if m.get("contact_id") in ids]
    found = [
        m
        for m in mine
        if c.text.lower() in str(m.get("text", "")).lower()
        and (c.channel is None or m.get("channel") == c.channel)
    ]
    via = f" via {c.channel}" if c.channel else ""
    what = f"{c.to} sent «{c.text}»{via}"
    if c.count is not None:
        return len(found) == c.count, f"{c.count} × {what}", f"{len(found)}"
    got = [f"{m.get('channel')}: {m.get('text')}" for m in mine]
    return bool(found), what, "found" if found else f"sent to {c.to}: {got}"


def check(e: Expectation, w: World, tz: ZoneInfo) -> Outcome:
    if e.lead is not None:
        ok, what, found = _entity("lead", e.lead, w)
    elif e.deal is not None:
        ok, what, found = _entity("deal", e.deal, w)
    elif e.task is not None:
        ok, what, found = _tasks(e.task, w, tz)
    elif e.notification is not None:
        ok, what, found = _notified(e.notification, w)
    elif e.sent is not None:
        ok, what, found = _sent(e.sent, w)
    else:
        ok = w.contact_count == e.contacts
        what, found = f"{e.contacts} contact(s) in all", str(w.contact_count)
    return Outcome(ok, what, found, e.quote)


def summary(outcomes: Mapping[int, list[Outcome]]) -> tuple[int, int]:
    """(passed, failed) over all steps."""
    flat = [o for os in outcomes.values() for o in os]
    return sum(o.ok for o in flat), sum(not o.ok for o in flat)
