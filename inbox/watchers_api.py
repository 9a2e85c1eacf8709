"""Watchers of leads and deals (crm_store/watchers.py) for operators.

- ``POST /api/v1/{leads|deals}/{id}/watchers`` ``{"user_id"}`` — the user watches it.
- ``DELETE /api/v1/{leads|deals}/{id}/watchers/{user_id}`` — no longer.

The lead/deal must be visible to the caller (inbox/access.py); the watcher must be an
active user in a department the caller sees (as for an assignment).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crm_store import watchers
from inbox import access
from inbox.api import Call, route
from inbox.entities_api import visible_entity

Kind = Literal["lead", "deal"]


class WatcherBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)


class Watchers(BaseModel):
    id: str
    watchers: list[str]
    changed: bool = Field(description="false: it already was (or was not) watching")


async def _change(call: Call, kind: Kind, user_id: str, *, add: bool) -> Watchers:
    doc = await visible_entity(call, kind)
    if add:
        access.require_assignable(call.svc.config, call.principal, user_id)
    changed = await watchers.change(
        call.svc.store, kind, doc["_id"], user_id, add=add, by=call.principal.user.id
    )
    fresh = await call.svc.store[f"{kind}s"].find_one({"_id": doc["_id"]}, {"watchers": 1})
    return Watchers(
        id=doc["_id"], watchers=list((fresh or {}).get("watchers") or []), changed=changed
    )


def _declare(kind: Kind) -> None:
    base = f"/api/v1/{kind}s/{{id}}/watchers"

    @route(
        "POST",
        base,
        summary=f"A user watches the {kind} (told by rules that notify watchers)",
        tag=f"{kind}s",
        body=WatcherBody,
        response=Watchers,
        errors=(404,),
    )
    async def add_watcher(call: Call) -> Watchers:
        return await _change(call, kind, call.b(WatcherBody).user_id, add=True)

    @route(
        "DELETE",
        f"{base}/{{user_id}}",
        summary=f"A user no longer watches the {kind}",
        tag=f"{kind}s",
        response=Watchers,
        errors=(404,),
    )
    async def remove_watcher(call: Call) -> Watchers:
        return await _change(call, kind, call.path("user_id"), add=False)

    add_watcher.__name__ = f"add_{kind}_watcher"
    remove_watcher.__name__ = f"remove_{kind}_watcher"


_declare("lead")
_declare("deal")
