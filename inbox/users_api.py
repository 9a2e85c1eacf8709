"""Who is who: the caller, the users, their tokens.

- ``GET /api/v1/me`` — the caller: role, department, the departments they see, what they
  may do.
- ``GET /api/v1/users`` · ``GET /api/v1/users/{id}`` — users of the departments the caller
  sees (whom they can assign work to); admins see everyone.
- ``POST /api/v1/users`` · ``PATCH /api/v1/users/{id}`` — admins: create or change a user
  (crm_store/users.py keeps them over users.yaml). A change applies to the next request.
- ``POST /api/v1/users/{id}/absences`` ``{"from", "to", "deputy"}`` · ``DELETE
  /api/v1/users/{id}/absences/{absence_id}`` — admins: a user away with a deputy
  (config/models.Absence; merged with users.yaml's ``absences``).
- ``POST /api/v1/users/{id}/tokens`` (the token is in the answer, once) · ``GET
  /api/v1/users/{id}/tokens`` · ``DELETE /api/v1/tokens/{token_id}`` — admins. Tokens are
  stored as SHA-256 hashes only; ``omniroute tokens issue|list|revoke`` does the same.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.models import Absence, Role, User
from crm_store import tokens
from crm_store import users as user_store
from inbox import access
from inbox.api import Call, field_errors, route
from inbox.auth import ApiError, require_admin
from ingest.context import SERVICE

TAG = "users"
IDENT = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # config.models.Ident
Line = Annotated[str, Field(pattern=IDENT)]


class Me(BaseModel):
    id: str
    name: str
    role: Role
    department: str
    departments: list[str] | None = Field(description="the departments you see; null: all")
    may_export: bool
    may_delete: bool
    is_admin: bool


class UserView(BaseModel):
    id: str
    name: str
    role: Role
    department: str
    lines: list[str]
    email: str | None
    active: bool
    managed_by: str = Field(description="config (users.yaml) or api (changed through the API)")


class UserList(BaseModel):
    items: list[UserView]


class UserCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "pavel.sokolov",
                    "name": "Павел Соколов",
                    "role": "manager",
                    "department": "sales",
                    "lines": ["sales"],
                    "email": "pavel@example.ru",
                }
            ]
        },
    )

    id: str = Field(pattern=IDENT)
    name: str = Field(min_length=1, max_length=200)
    role: Role
    department: str = Field(pattern=IDENT, description="a department of users.yaml")
    lines: list[Line] = Field(default_factory=list, max_length=20)
    email: str | None = Field(default=None, max_length=320)
    active: bool = True


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    department: str | None = Field(default=None, pattern=IDENT)
    lines: list[Line] | None = Field(default=None, max_length=20)
    email: str | None = Field(default=None, max_length=320)
    active: bool | None = None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200, description="what the token is for")


class TokenView(BaseModel):
    token_id: str
    user_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class NewToken(TokenView):
    token: str = Field(description="the Bearer token: shown this once, stored only hashed")


class TokenList(BaseModel):
    items: list[TokenView]


class Revoked(BaseModel):
    token_id: str
    revoked: bool


def _view(call: Call, user: User) -> UserView:
    directory = call.request.app[DIRECTORY]
    managed = "api" if user.id in directory.from_api else "config"
    return UserView(**user.model_dump(), managed_by=managed)


def _visible_user(call: Call, user_id: str) -> User:
    user = call.svc.config.user(user_id)
    if user is None or not call.principal.sees_department(user.department):
        raise ApiError(404, "not_found", f"no user {user_id}")
    return user


def _checked(call: Call, values: dict[str, object]) -> User:
    departments = {d.id for d in call.svc.config.users.departments}
    if values.get("department") not in departments:
        raise ApiError(
            422,
            "invalid_request",
            f"no department {values.get('department')!r}",
            errors=[{"in": "body", "field": "department", "message": "unknown department"}],
        )
    try:
        return User.model_validate(values)
    except ValidationError as exc:
        errors = field_errors("body", exc)
        raise ApiError(
            422, "invalid_request", "the user does not validate", errors=errors
        ) from None


@route("GET", "/api/v1/me", summary="The caller and what they may do", tag=TAG, response=Me)
async def me(call: Call) -> Me:
    p = call.principal
    return Me(
        id=p.user.id,
        name=p.user.name,
        role=p.user.role,
        department=p.user.department,
        departments=None if p.departments is None else sorted(p.departments),
        may_export=access.may_export(p),
        may_delete=access.may_delete(p),
        is_admin=p.is_admin,
    )


@route(
    "GET",
    "/api/v1/users",
    summary="Users of the departments the caller sees",
    tag=TAG,
    response=UserList,
)
async def list_users(call: Call) -> UserList:
    users = [u for u in call.svc.config.users.users if call.principal.sees_department(u.department)]
    return UserList(items=[_view(call, u) for u in users])


@route("GET", "/api/v1/users/{id}", summary="One user", tag=TAG, response=UserView, errors=(404,))
async def get_user(call: Call) -> UserView:
    return _view(call, _visible_user(call, call.path("id")))


@route(
    "POST",
    "/api/v1/users",
    summary="Create a user (admins)",
    tag=TAG,
    body=UserCreate,
    response=UserView,
    status=201,
    errors=(409,),
)
async def create_user(call: Call) -> UserView:
    require_admin(call.principal)
    body = call.b(UserCreate)
    if call.svc.config.user(body.id) is not None:
        raise ApiError(409, "conflict", f"user {body.id} exists; change it with PATCH")
    user = _checked(call, body.model_dump())
    await user_store.save(call.svc.store, user, call.principal.user.id)
    await call.request.app[DIRECTORY].refresh(call.svc.store)
    return _view(call, user)


@route(
    "PATCH",
    "/api/v1/users/{id}",
    summary="Change a user (admins): name, role, department, lines, e-mail, active",
    tag=TAG,
    body=UserPatch,
    response=UserView,
    errors=(404,),
)
async def patch_user(call: Call) -> UserView:
    require_admin(call.principal)
    current = _visible_user(call, call.path("id"))
    changes = call.b(UserPatch).model_dump(exclude_unset=True)
    user = _checked(call, {**current.model_dump(), **changes})
    await user_store.save(call.svc.store, user, call.principal.user.id)
    await call.request.app[DIRECTORY].refresh(call.svc.store)
    return _view(call, user)


@route(
    "POST",
    "/api/v1/users/{id}/tokens",
    summary="Issue an API token for a user (admins; shown once)",
    tag=TAG,
    body=TokenCreate,
    response=NewToken,
    status=201,
    errors=(404,),
)
async def issue_token(call: Call) -> NewToken:
    require_admin(call.principal)
    user = _visible_user(call, call.path("id"))
    token, doc = await tokens.issue(call.svc.store, user.id, call.b(TokenCreate).name)
    return NewToken.model_validate({**doc, "token": token})


@route(
    "GET",
    "/api/v1/users/{id}/tokens",
    summary="A user's tokens (admins; never the tokens themselves)",
    tag=TAG,
    response=TokenList,
    errors=(404,),
)
async def list_user_tokens(call: Call) -> TokenList:
    require_admin(call.principal)
    user = _visible_user(call, call.path("id"))
    found = await tokens.list_tokens(call.svc.store, user.id)
    return TokenList(items=[TokenView.model_validate(t) for t in found])


@route(
    "DELETE",
    "/api/v1/tokens/{token_id}",
    summary="Revoke a token (admins)",
    tag=TAG,
    response=Revoked,
    errors=(404,),
)
async def revoke_token(call: Call) -> Revoked:
    require_admin(call.principal)
    token_id = call.path("token_id")
    if not await tokens.revoke(call.svc.store, token_id):
        raise ApiError(404, "not_found", f"no active token {token_id}")
    return Revoked(token_id=token_id, revoked=True)


class AbsenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: date | datetime = Field(alias="from", description="a date (whole day) or a moment")
    to: date | datetime = Field(description="a date (that whole day included) or a moment")
    deputy: str | None = Field(default=None, pattern=IDENT, description="who stands in")


class AbsenceView(BaseModel):
    # Answered as "from" (the documented name): the response is dumped by field name
    # otherwise.
    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    user: str
    from_: date | datetime = Field(serialization_alias="from")
    to: date | datetime
    deputy: str | None


class AbsenceRemoved(BaseModel):
    id: str
    removed: bool


@route(
    "POST",
    "/api/v1/users/{id}/absences",
    summary="Record a user's absence with a deputy (admins); merged with users.yaml's",
    tag=TAG,
    body=AbsenceBody,
    response=AbsenceView,
    status=201,
    errors=(404,),
)
async def add_absence(call: Call) -> AbsenceView:
    require_admin(call.principal)
    user = _visible_user(call, call.path("id"))
    body = call.b(AbsenceBody)
    config = call.svc.config
    absence = Absence.model_validate(
        {"user": user.id, "from": body.from_, "to": body.to, "deputy": body.deputy}
    )
    start, end = absence.window(ZoneInfo(config.calendar.timezone))
    problems: list[dict[str, str]] = []
    if end <= start:
        problems.append(
            {"in": "body", "field": "to", "message": "the absence ends before it starts"}
        )
    deputy = config.user(body.deputy) if body.deputy else None
    if body.deputy is not None and (deputy is None or not deputy.active or deputy.id == user.id):
        problems.append({"in": "body", "field": "deputy", "message": "not another active user"})
    if problems:
        raise ApiError(422, "invalid_request", "the absence does not validate", errors=problems)
    stored = await user_store.add_absence(call.svc.store, absence, call.principal.user.id)
    await call.request.app[DIRECTORY].refresh(call.svc.store)
    assert stored.id is not None
    return AbsenceView(
        id=stored.id, user=user.id, from_=stored.from_, to=stored.to, deputy=stored.deputy
    )


@route(
    "DELETE",
    "/api/v1/users/{id}/absences/{absence_id}",
    summary="Remove an absence entered through the API (admins)",
    tag=TAG,
    response=AbsenceRemoved,
    errors=(404,),
)
async def remove_absence(call: Call) -> AbsenceRemoved:
    require_admin(call.principal)
    user = _visible_user(call, call.path("id"))
    absence_id = call.path("absence_id")
    if not await user_store.delete_absence(call.svc.store, user.id, absence_id):
        raise ApiError(404, "not_found", f"no absence {absence_id} of {user.id}")
    await call.request.app[DIRECTORY].refresh(call.svc.store)
    return AbsenceRemoved(id=absence_id, removed=True)


DIRECTORY: web.AppKey[user_store.Directory] = web.AppKey("users", user_store.Directory)


def setup(app: web.Application) -> None:
    """The user directory of this app: the overlay applied at start, refreshed."""
    directory = user_store.Directory(app[SERVICE].config)
    app[DIRECTORY] = directory

    async def start(_: web.Application) -> None:
        await directory.start(app[SERVICE].store)

    async def stop(_: web.Application) -> None:
        await directory.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
