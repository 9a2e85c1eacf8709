"""Who a rule means (pure, from ``users.yaml``): the responsible, their head, a user, the
users of a role, the entity's watchers — and who is told instead when that is nobody; a
user away (``absences``) is replaced by their deputy (:func:`present`).

A notification never goes nowhere: when its ``to`` resolves to nobody (the head of sales
is the lead's own responsible and has no head above; the lead has no responsible; a role
nobody holds), it falls back along **head → director → admin**: the head above the
responsible, else the director nearest the responsible's department, else an admin — not
the responsible themself (the notification is about their work) unless they are the top of
the chain (the one director of a small company). ``check-config`` lists
the rules that lean on the fallback and those that reach nobody even so
(:func:`recipient_warnings`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from automation.rules import FieldWho, Notify, RoleRef, UserRef, Who
from config.models import AppConfig

# The fallback after "head": the first role with an active user other than the responsible.
FALLBACK_ROLES = ("director", "admin")


def head_of(config: AppConfig, user_id: str | None) -> str | None:
    """The head of the user's department — or, for the head themselves, of the nearest
    department above with an active head of its own. None if there is nobody above."""
    user = config.user(user_id) if user_id else None
    if user is None:
        return None
    departments = {d.id: d for d in config.users.departments}
    dept = departments.get(user.department)
    seen: set[str] = set()
    while dept is not None and dept.id not in seen:
        seen.add(dept.id)
        head = config.user(dept.head) if dept.head else None
        if head is not None and head.active and head.id != user.id:
            return head.id
        dept = departments.get(dept.parent) if dept.parent else None
    return None


def _role_users(config: AppConfig, role: str, near: str | None) -> list[str]:
    """Active users with ``role``, those of ``near``'s department (and the ones above)
    first."""
    users = [u for u in config.users.users if u.active and u.role.value == role]
    chain: list[str] = []
    departments = {d.id: d for d in config.users.departments}
    user = config.user(near) if near else None
    dept = departments.get(user.department) if user else None
    while dept is not None and dept.id not in chain:
        chain.append(dept.id)
        dept = departments.get(dept.parent) if dept.parent else None
    rank = {d: i for i, d in enumerate(chain)}
    return [u.id for u in sorted(users, key=lambda u: rank.get(u.department, len(chain)))]


def resolve(
    config: AppConfig, who: Who, responsible: str | None, watchers: Sequence[str] = ()
) -> list[str]:
    """Every user ``who`` means for an entity whose responsible is ``responsible`` and
    whose watchers are ``watchers``."""
    if who == "watchers":
        return [w for w in watchers if (u := config.user(w)) is not None and u.active]
    if isinstance(who, UserRef):
        user = config.user(who.user)
        return [user.id] if user is not None and user.active else []
    if isinstance(who, RoleRef):
        return _role_users(config, who.role, responsible)
    if who == "responsible":
        return [responsible] if responsible else []
    head = head_of(config, responsible)
    return [head] if head else []


def one(
    config: AppConfig, who: Who, responsible: str | None, watchers: Sequence[str] = ()
) -> str | None:
    """The one user ``who`` means (a role: its first user nearest the responsible)."""
    found = resolve(config, who, responsible, watchers)
    return found[0] if found else None


def many(
    config: AppConfig,
    whos: tuple[Who, ...] | list[Who],
    responsible: str | None,
    watchers: Sequence[str] = (),
) -> list[str]:
    out: list[str] = []
    for who in whos:
        for user in resolve(config, who, responsible, watchers):
            if user not in out:
                out.append(user)
    return out


@dataclass(frozen=True, slots=True)
class Assignee:
    """Who a task goes to, and why not to whom the rule said (None: as it said)."""

    user: str | None
    problem: str | None = None


def assignee(
    config: AppConfig,
    who: Who | FieldWho,
    fields: Mapping[str, Any],
    responsible: str | None,
    watchers: Sequence[str] = (),
) -> Assignee:
    """The one user a task's ``assignee`` means. ``{field: f}``: the user id held in the
    entity's field ``f`` — when that is empty, not a user or an inactive one, the
    notification fallback (head → director → admin, :func:`fallback`) with the reason."""
    if not isinstance(who, FieldWho):
        return Assignee(one(config, who, responsible, watchers))
    value = fields.get(who.field)
    user = config.user(value) if isinstance(value, str) and value else None
    if user is not None and user.active:
        return Assignee(user.id)
    if value in (None, "", [], {}):
        why = f"the field {who.field} is empty"
    elif user is None:
        why = f"the field {who.field} holds {str(value)[:100]!r}, not a user"
    else:
        why = f"the field {who.field} names {user.id}, who is inactive"
    got = fallback(config, responsible)
    then = f"; the task goes to the {got.fallback} {got.users[0]}" if got.users else ""
    return Assignee(got.users[0] if got.users else None, f"assignee: {why}{then}")


@dataclass(frozen=True, slots=True)
class Recipients:
    users: list[str]
    # The fallback role that was used ("director" / "admin"); None: ``to`` itself.
    fallback: str | None = None


def fallback(config: AppConfig, responsible: str | None) -> Recipients:
    """Who is told when a notification's ``to`` is nobody: the head above the responsible,
    else the nearest director, else an admin (another than the responsible; the
    responsible only when they are that director or admin and nobody else is)."""
    head = head_of(config, responsible)
    if head is not None and head != responsible:
        return Recipients([head], "head")
    for role in FALLBACK_ROLES:
        found = [u for u in _role_users(config, role, responsible) if u != responsible]
        if found:
            return Recipients(found[:1], role)
    # The top of the chain is the responsible themself (a one-director company): told
    # rather than nobody.
    for role in FALLBACK_ROLES:
        if responsible in _role_users(config, role, responsible):
            return Recipients([responsible], role)
    return Recipients([])


def notified(
    config: AppConfig,
    whos: tuple[Who, ...] | list[Who],
    responsible: str | None,
    watchers: Sequence[str] = (),
) -> Recipients:
    """The users a notification goes to: ``whos``, or the fallback when that is nobody."""
    users = many(config, whos, responsible, watchers)
    return Recipients(users) if users else fallback(config, responsible)


def present(config: AppConfig, users: Sequence[str], at: datetime) -> list[str]:
    """``users`` with each one away at ``at`` replaced by their deputy
    (:meth:`config.models.AppConfig.stand_in`), each once."""
    out: list[str] = []
    for user in users:
        stand_in = config.stand_in(user, at)
        if stand_in not in out:
            out.append(stand_in)
    return out


def _notifies(action: object) -> Iterator[Notify]:
    spec = getattr(action, "notify", None)
    if isinstance(spec, Notify):
        yield spec


def recipient_warnings(config: AppConfig) -> list[tuple[str, str]]:
    """For ``check-config``: every notifying rule whose ``to`` can resolve to nobody — for
    some responsible, or none — as (level, text): a ``warning`` where even the fallback is
    nobody (the notification would fail), a ``note`` naming who the fallback tells."""
    people: list[str | None] = [
        u.id for u in config.users.users if u.active and u.role.value != "no_access"
    ]
    people.append(None)
    out: list[tuple[str, str]] = []
    for rule in config.automation.rules:
        for spec in (n for a in rule.do for n in _notifies(a)):
            outcomes: dict[str, list[str]] = {}
            for responsible in people:
                if many(config, spec.to, responsible):
                    continue
                got = fallback(config, responsible)
                then = f"{got.fallback} {got.users[0]}" if got.users else ""
                outcomes.setdefault(then, []).append(responsible or "(none)")
            if not outcomes:
                continue
            to = ", ".join(w if isinstance(w, str) else repr(w) for w in spec.to)
            head = f"rule {rule.id}: notify [{to}] resolves to nobody when the responsible is"
            if "" in outcomes:
                who = ", ".join(outcomes.pop(""))
                out.append(
                    ("warning", f"{head} {who}, and so does the fallback (no director or admin)")
                )
            if outcomes:
                cases = "; ".join(f"{', '.join(r)} → {then}" for then, r in outcomes.items())
                out.append(("note", f"{head} {cases} (fallback: head → director → admin)"))
    return out
