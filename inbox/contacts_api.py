"""Contacts for operators: list, read, edit, merge, delete.

- ``GET /api/v1/contacts?q=&responsible=&cursor=&limit=`` — newest first; ``q`` matches the
  name, a phone (any spelling) or an e-mail address.
- ``GET /api/v1/contacts/{id}`` — with its leads, deals and conversations.
- ``PATCH /api/v1/contacts/{id}`` ``{"name", "responsible_id", "sms_opt_out",
  "sms_opt_out_reason", "fields"}`` (an opted-out contact is never texted:
  docs/channels/sms.md; ``fields``: custom fields with scalar values, null removes one —
  the eco-goods wholesaler's «Является ЛПР» is ``{"fields": {"is_decision_maker": true}}``).
- ``POST /api/v1/contacts/{id}/merge`` ``{"other_id"}`` — ``other`` merges into ``id``
  (crm_store/contacts.py: identities, leads, deals, conversations move; an audit record).
- ``DELETE /api/v1/contacts/{id}`` — directors and admins.

A contact is visible by the department of its responsible (inbox/access.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from channels.identity import normalize_email, normalize_phone
from crm_store import contact_fields, contacts, sms_contacts
from crm_store.contacts import ContactError
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.entities_api import Deleted
from inbox.paging import cursor_of, older_than
from inbox.views import ContactView, EntityView

TAG = "contacts"
RELATED_LIMIT = 200
# A contact's custom fields (``fields``): names like the rules' fields.
MAX_FIELDS = contact_fields.MAX_FIELDS
FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
FieldValue = Annotated[str, StringConstraints(max_length=1000)] | bool | int | float | None


class ContactQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(default=None, min_length=1, max_length=200)
    responsible: str | None = Field(default=None, max_length=128, description="a user id or me")
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=200)


class ContactPage(BaseModel):
    items: list[ContactView]
    next_cursor: str | None


class ContactDetail(BaseModel):
    contact: ContactView
    leads: list[EntityView]
    deals: list[EntityView]
    conversation_ids: list[str]


class ContactPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=300)
    responsible_id: str | None = Field(default=None, min_length=1, max_length=128)
    sms_opt_out: bool | None = Field(
        default=None, description="true: never text this customer again; false: lift it"
    )
    sms_opt_out_reason: str | None = Field(default=None, min_length=1, max_length=200)
    fields: dict[FieldName, FieldValue] | None = Field(
        default=None,
        max_length=MAX_FIELDS,
        description="custom fields to set (scalar values; null removes one); others are kept",
    )


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    other_id: str = Field(min_length=1, max_length=128, description="merged into this one")


async def visible_contact(call: Call, contact_id: str, field: str | None = None) -> Document:
    doc = await call.svc.store.contacts.find_one({"_id": contact_id})
    hidden = doc is None or doc.get("deleted") or doc.get("merged_into")
    if hidden or not access.sees_entity(call.svc.config, call.principal, doc):
        errors = [{"in": "body", "field": field, "message": "no such contact"}] if field else None
        raise ApiError(404, "not_found", f"no contact {contact_id}", errors=errors)
    assert doc is not None
    return doc


def _text_filter(text: str) -> Document:
    ors: list[Document] = [{"name": {"$regex": re.escape(text), "$options": "i"}}]
    if phone := normalize_phone(text):
        ors.append({"identities": f"phone:{phone}"})
    if email := normalize_email(text):
        ors.append({"identities": f"email:{email}"})
    return {"$or": ors}


@route(
    "GET",
    "/api/v1/contacts",
    summary="Contacts the caller may see, newest first",
    tag=TAG,
    query=ContactQuery,
    response=ContactPage,
)
async def list_contacts(call: Call) -> ContactPage:
    q = call.q(ContactQuery)
    parts: list[Document] = [
        access.entity_filter(call.svc.config, call.principal),
        {"deleted": {"$ne": True}},
        {"merged_into": None},
    ]
    if q.q:
        parts.append(_text_filter(q.q))
    if q.responsible:
        parts.append(
            {"responsible_id": call.principal.user.id if q.responsible == "me" else q.responsible}
        )
    if q.cursor:
        parts.append(older_than(q.cursor, "created_at"))
    docs = [
        d
        async for d in call.svc.store.contacts.find(
            {"$and": [p for p in parts if p]},
            sort=[("created_at", -1), ("_id", -1)],
            limit=q.limit + 1,
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    cursor = cursor_of(docs[-1], "created_at") if more and docs else None
    return ContactPage(items=[ContactView.of(d) for d in docs], next_cursor=cursor)


async def _detail(call: Call, doc: Document) -> ContactDetail:
    store = call.svc.store
    related: dict[str, list[EntityView]] = {"lead": [], "deal": []}
    for kind in ("lead", "deal"):
        async for d in store[f"{kind}s"].find(
            {"contact_id": doc["_id"], "deleted": {"$ne": True}},
            sort=[("created_at", -1)],
            limit=RELATED_LIMIT,
        ):
            related[kind].append(EntityView.of_kind(kind, d))
    conv_ids = [
        c["_id"]
        async for c in store.conversations.find(
            {"contact_id": doc["_id"]}, {"_id": 1}, limit=RELATED_LIMIT
        )
    ]
    return ContactDetail(
        contact=ContactView.of(doc),
        leads=related["lead"],
        deals=related["deal"],
        conversation_ids=conv_ids,
    )


@route(
    "GET",
    "/api/v1/contacts/{id}",
    summary="One contact with its leads, deals and conversations",
    tag=TAG,
    response=ContactDetail,
    errors=(404,),
)
async def get_contact(call: Call) -> ContactDetail:
    return await _detail(call, await visible_contact(call, call.path("id")))


@route(
    "PATCH",
    "/api/v1/contacts/{id}",
    summary="Edit a contact: name, responsible, SMS opt-out, custom fields",
    tag=TAG,
    body=ContactPatch,
    response=ContactView,
    errors=(404,),
)
async def patch_contact(call: Call) -> ContactView:
    body = call.b(ContactPatch)
    doc = await visible_contact(call, call.path("id"))
    changes: Document = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.responsible_id is not None:
        access.require_assignable(call.svc.config, call.principal, body.responsible_id)
        changes["responsible_id"] = body.responsible_id
    if body.sms_opt_out is not None:
        await sms_contacts.set_opt_out(
            call.svc.store,
            doc["_id"],
            body.sms_opt_out,
            reason=body.sms_opt_out_reason,
            by=call.principal.user.id,
        )
    if body.fields:
        try:
            await contact_fields.set_fields(call.svc.store, doc, body.fields, extra=changes)
        except contact_fields.TooManyFields as exc:
            raise ApiError(422, "too_many_fields", str(exc)) from None
    elif changes:
        changes["updated_at"] = datetime.now(UTC)
        await call.svc.store.contacts.update_one({"_id": doc["_id"]}, {"$set": changes})
    if body.sms_opt_out is not None or body.fields:
        fresh = await call.svc.store.contacts.find_one({"_id": doc["_id"]})
        return ContactView.of(fresh or {**doc, **changes})
    return ContactView.of({**doc, **changes})


@route(
    "POST",
    "/api/v1/contacts/{id}/merge",
    summary="Merge another contact into this one (identities, leads, deals, conversations)",
    tag=TAG,
    body=MergeBody,
    response=ContactDetail,
    errors=(404, 409),
)
async def merge_contact(call: Call) -> ContactDetail:
    other_id = call.b(MergeBody).other_id
    winner = await visible_contact(call, call.path("id"))
    if other_id == winner["_id"]:
        raise ApiError(
            422,
            "same_contact",
            "a contact cannot be merged into itself",
            errors=[{"in": "body", "field": "other_id", "message": "the same contact"}],
        )
    other = await call.svc.store.contacts.find_one({"_id": other_id})
    if other is not None and other.get("merged_into") == winner["_id"]:
        pass  # a repeated request: finish (or confirm) the merge it started
    else:
        await visible_contact(call, other_id, field="other_id")
    try:
        merged = await contacts.merge(
            call.svc.store, winner["_id"], other_id, call.principal.user.id
        )
    except ContactError as exc:
        raise ApiError(409 if exc.code == "merged" else 404, exc.code, exc.detail) from None
    return await _detail(call, merged)


@route(
    "DELETE",
    "/api/v1/contacts/{id}",
    summary="Delete a contact (directors and admins); its addresses become free",
    tag=TAG,
    response=Deleted,
    errors=(404,),
)
async def delete_contact(call: Call) -> Deleted:
    access.require_delete(call.principal)
    doc = await visible_contact(call, call.path("id"))
    done = await contacts.delete(call.svc.store, doc["_id"], call.principal.user.id)
    return Deleted(id=doc["_id"], deleted=done)
