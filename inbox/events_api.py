"""The event feed and webhook subscriptions for downstream consumers (docs/events.md).

- ``GET /api/v1/events?after=N&types=a,b&limit=L&wait=S`` — the ordered feed, filtered by
  what the caller may see; ``wait`` long-polls up to 30 s for the first event.
- ``/api/v1/subscriptions`` — push subscriptions (admin): create, list, get, delete; their
  deliveries (``?status=dead`` for the dead letters); replay a range; replay one delivery.

Routed, authenticated and documented by inbox/declared.py (the caller is passed in).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm_store import feed
from crm_store import subscriptions as subs
from crm_store.event_catalogue import EVENT_TYPES
from crm_store.store import Document
from inbox.auth import ApiError, Principal, require_admin
from inbox.bounds import INT64_MAX
from ingest.context import Service, json_response

MAX_WAIT_S = 30.0
MAX_LIMIT = 1000


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(422, "invalid_request", f"{name} must be between {lo} and {hi}")
    return value


def _types(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    types = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown event types: {', '.join(unknown)}")
    return types


async def _visible(svc: Service, principal: Principal, events: list[Document]) -> list[Document]:
    if principal.departments is None:
        return events
    department_of = {u.id: u.department for u in svc.config.users.users}
    depts = await feed.responsible_departments(svc.store, events, department_of)
    return [e for e in events if depts[e["_id"]] & principal.departments]


async def list_events(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    after = _int(request, "after", 0, 0, 2**62)
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    wait = min(float(_int(request, "wait", 0, 0, int(MAX_WAIT_S))), MAX_WAIT_S)
    types = _types(request.query.get("types"))
    deadline = time.monotonic() + wait
    cursor = after
    while True:
        page = await feed.read(svc.store, cursor, limit=limit, types=types)
        cursor = page.next_after
        events = await _visible(svc, principal, page.events)
        if events or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    return json_response({"events": [feed.envelope(e) for e in events], "next_after": cursor})


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    types: list[str] = Field(default_factory=list, description="empty: every type")
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    from_seq: int | None = Field(
        default=None, ge=0, le=INT64_MAX, description="start here; default: after the current end"
    )
    max_age_s: float = Field(default=subs.DEFAULT_MAX_AGE_S, gt=0, le=7 * 24 * 3600)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types: {', '.join(unknown)}")
        return value


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_seq: int = Field(ge=1, le=INT64_MAX)
    to_seq: int = Field(ge=1, le=INT64_MAX)


def public(sub: Document, *, with_secret: bool = False) -> dict[str, Any]:
    keys = [
        "url",
        "types",
        "active",
        "cursor",
        "max_age_s",
        "created_at",
        "kind",
        "replay_of",
        "until_seq",
        "head",
    ]
    out: dict[str, Any] = {"id": sub["_id"], **{k: sub.get(k) for k in keys}}
    if with_secret:
        out["secret"] = sub["secret"]
    return out


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not JSON") from None


async def _sub(svc: Service, sub_id: str) -> Document:
    sub = await subs.get(svc.store, sub_id)
    if sub is None:
        raise ApiError(404, "not_found", f"no subscription {sub_id}")
    return sub


async def create_subscription(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    require_admin(principal)
    data = SubscriptionIn.model_validate(await _body(request))
    sub = await subs.create(
        svc.store,
        data.url,
        data.types,
        secret=data.secret,
        from_seq=data.from_seq,
        max_age_s=data.max_age_s,
    )
    return json_response(public(sub, with_secret=True), status=201)


async def list_subscriptions(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    require_admin(principal)
    return json_response({"subscriptions": [public(s) for s in await subs.list_all(svc.store)]})


async def get_subscription(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    require_admin(principal)
    return json_response(public(await _sub(svc, request.match_info["id"])))


async def delete_subscription(
    request: web.Request, svc: Service, principal: Principal
) -> web.Response:
    require_admin(principal)
    sub = await _sub(svc, request.match_info["id"])
    await subs.deactivate(svc.store, sub["_id"])
    return web.Response(status=204)


async def list_deliveries(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    require_admin(principal)
    sub = await _sub(svc, request.match_info["id"])
    status = request.query.get("status")
    if status not in (None, "delivered", "failing", "dead"):
        raise ApiError(422, "invalid_request", "status is one of delivered, failing, dead")
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    rows = await subs.deliveries(svc.store, sub["_id"], status=status, limit=limit)
    for r in rows:
        r["id"] = r.pop("_id")
    return json_response({"deliveries": rows})


async def replay_range(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    require_admin(principal)
    sub = await _sub(svc, request.match_info["id"])
    data = ReplayIn.model_validate(await _body(request))
    if data.to_seq < data.from_seq:
        raise ApiError(422, "invalid_request", "to_seq is before from_seq")
    replay = await subs.create_replay(svc.store, sub, data.from_seq, data.to_seq)
    return json_response(public(replay), status=202)


async def replay_delivery(request: web.Request, svc: Service, principal: Principal) -> web.Response:
    require_admin(principal)
    delivery = await subs.get_delivery(svc.store, request.match_info["id"])
    if delivery is None:
        raise ApiError(404, "not_found", f"no delivery {request.match_info['id']}")
    parent = await _sub(svc, delivery.get("replay_of") or delivery["subscription_id"])
    seq = int(delivery["seq"])
    replay = await subs.create_replay(svc.store, parent, seq, seq)
    return json_response(public(replay), status=202)
