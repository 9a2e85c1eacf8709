"""Who is calling the API, and what they may see. One place for every endpoint.

Bearer tokens (``Authorization: Bearer omr_…``) belong to users from ``users.yaml``;
``omniroute tokens issue --user ID`` creates one. Visibility by role:

- ``admin``: everything;
- ``director``: their department and every department below it;
- ``manager``: their own department;
- ``no_access``: nothing (403 on every CRM endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from config.models import AppConfig, Role, User
from crm_store import tokens
from crm_store.store import Store


class ApiError(Exception):
    """An API refusal, rendered as problem+json by the caller."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


@dataclass(frozen=True, slots=True)
class Principal:
    user: User
    # None: every department.
    departments: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return self.user.role is Role.ADMIN

    def sees_department(self, department: str | None) -> bool:
        if self.departments is None:
            return True
        return department is not None and department in self.departments


def visible_departments(config: AppConfig, user: User) -> frozenset[str] | None:
    if user.role is Role.ADMIN:
        return None
    if user.role is Role.DIRECTOR:
        return frozenset(config.department_subtree(user.department))
    if user.role is Role.MANAGER:
        return frozenset({user.department})
    return frozenset()


async def authenticate(request: web.Request, store: Store, config: AppConfig) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
    return await principal_for_token(store, config, token.strip())


async def principal_for_token(store: Store, config: AppConfig, token: str) -> Principal:
    """The user behind an API token (a header's, or a WebSocket's ``?token=``)."""
    record = await tokens.lookup(store, token)
    user = config.user(record["user_id"]) if record else None
    if record is None or user is None or not user.active:
        raise ApiError(401, "unauthenticated", "unknown, revoked or inactive token")
    if user.role is Role.NO_ACCESS:
        raise ApiError(403, "forbidden", "this user has no access to the CRM")
    return Principal(user, visible_departments(config, user))


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "only an admin may do this")
