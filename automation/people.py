"""Who a rule means (pure, from ``users.yaml``): the responsible, their head, a user, the
users of a role."""

from __future__ import annotations

from automation.rules import RoleRef, UserRef, Who
from config.models import AppConfig


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


def resolve(config: AppConfig, who: Who, responsible: str | None) -> list[str]:
    """Every user ``who`` means for an entity whose responsible is ``responsible``."""
    if isinstance(who, UserRef):
        user = config.user(who.user)
        return [user.id] if user is not None and user.active else []
    if isinstance(who, RoleRef):
        return _role_users(config, who.role, responsible)
    if who == "responsible":
        return [responsible] if responsible else []
    head = head_of(config, responsible)
    return [head] if head else []


def one(config: AppConfig, who: Who, responsible: str | None) -> str | None:
    """The one user ``who`` means (a role: its first user nearest the responsible)."""
    found = resolve(config, who, responsible)
    return found[0] if found else None


def many(
    config: AppConfig, whos: tuple[Who, ...] | list[Who], responsible: str | None
) -> list[str]:
    out: list[str] = []
    for who in whos:
        for user in resolve(config, who, responsible):
            if user not in out:
                out.append(user)
    return out
