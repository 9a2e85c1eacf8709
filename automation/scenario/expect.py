"""A scenario's expectations checked against the :class:`~automation.scenario.world.World`
(pure). Each failed check says what was expected and what was found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from automation.scenario.model import (
    CompanyCheck,
    ContactCheck,
    DocumentCheck,
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


def _entity(kind: str, c: EntityCheck, w: World, tz: ZoneInfo) -> tuple[bool, str, str]:
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
        have = (d.get("fields") or {}).get(name, d.get(name))
        # A time (set_field now) reads as its local "YYYY-MM-DD HH:MM".
        want[name], got[name] = value, _local(have, tz) or have
    if (c.seen_by or c.hidden_from) and w.sees is not None:
        sees = w.sees
        users = [*c.seen_by, *c.hidden_from]
        want["seen_by"] = sorted(c.seen_by)
        got["seen_by"] = sorted(u for u in users if sees(u, d))
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


def _contact(c: ContactCheck, w: World) -> tuple[bool, str, str]:
    doc = w.contact_of(c.of)
    what = f"{c.of}'s contact" + "".join(
        f" {k}={v}" for k, v in (("responsible", c.responsible), ("company", c.company)) if v
    )
    if c.fields:
        what += f" fields={c.fields}"
    if doc is None:
        return False, what, "no contact"
    company = w.companies.get(str(doc.get("company_id")), {})
    name = str(company.get("name", ""))
    have = doc.get("fields") or {}
    ok = (
        (c.responsible is None or doc.get("responsible_id") == c.responsible)
        and (c.company is None or c.company.lower() in name.lower())
        and all(k in have and _same(v, have[k]) for k, v in c.fields.items())
    )
    found = f"responsible={doc.get('responsible_id')} company={name or None}"
    return ok, what, found + (f" fields={have}" if c.fields else "")


def _company(c: CompanyCheck, w: World) -> tuple[bool, str, str]:
    doc = w.contact_of(c.of)
    company = w.companies.get(str((doc or {}).get("company_id")))
    want: dict[str, Any] = {
        k: v for k, v in (("name", c.name), ("inn", c.inn), ("responsible", c.responsible)) if v
    }
    what = f"{c.of}'s company: {want | dict(c.fields)}"
    if company is None:
        return False, what, "no company"
    got: dict[str, Any] = {
        "name": company.get("name"),
        "inn": company.get("inn"),
        "responsible": company.get("responsible_id"),
    }
    ok = all(_same(v, got[k]) for k, v in want.items())
    have = company.get("fields") or {}
    ok = ok and all(_same(v, have.get(k)) for k, v in c.fields.items())
    return ok, what, f"{got | dict(have)}"


def _documents(c: DocumentCheck, w: World) -> tuple[bool, str, str]:
    deals = {d["_id"] for d in w.of(c.of, "deal", c.pipeline)}
    mine = [d for d in w.documents if d.get("deal_id") in deals]
    found = [
        d
        for d in mine
        if d.get("type") == c.type and (c.status is None or d.get("status") == c.status)
    ]
    where = f" in {c.pipeline}" if c.pipeline else ""
    what = f"document {c.type}{' ' + c.status if c.status else ''} of {c.of}'s deal{where}"
    if c.count is not None:
        return len(found) == c.count, f"{c.count} × {what}", f"{len(found)}"
    got = [f"{d.get('type')} {d.get('number')} {d.get('status')}" for d in mine]
    return bool(found), what, "found" if found else f"documents: {got}"


def check(e: Expectation, w: World, tz: ZoneInfo) -> Outcome:
    if e.lead is not None:
        ok, what, found = _entity("lead", e.lead, w, tz)
    elif e.deal is not None:
        ok, what, found = _entity("deal", e.deal, w, tz)
    elif e.task is not None:
        ok, what, found = _tasks(e.task, w, tz)
    elif e.notification is not None:
        ok, what, found = _notified(e.notification, w)
    elif e.sent is not None:
        ok, what, found = _sent(e.sent, w)
    elif e.contact is not None:
        ok, what, found = _contact(e.contact, w)
    elif e.company is not None:
        ok, what, found = _company(e.company, w)
    elif e.document is not None:
        ok, what, found = _documents(e.document, w)
    else:
        ok = w.contact_count == e.contacts
        what, found = f"{e.contacts} contact(s) in all", str(w.contact_count)
    return Outcome(ok, what, found, e.quote)


def summary(outcomes: Mapping[int, list[Outcome]]) -> tuple[int, int]:
    """(passed, failed) over all steps."""
    flat = [o for os in outcomes.values() for o in os]
    return sum(o.ok for o in flat), sum(not o.ok for o in flat)
