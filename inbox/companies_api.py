"""Companies for operators: list and search, read, create, edit, link and unlink contacts.

- ``GET /api/v1/companies?q=&type=&responsible=&cursor=&limit=`` — newest first; ``q``
  matches the name (any case) or the start of the INN.
- ``GET /api/v1/companies/{id}`` — with its contacts, leads and deals.
- ``POST /api/v1/companies`` (crm_store/companies.CompanyData) — 201 with the new company,
  or with the existing one when a visible company already holds the INN (one company per
  INN: same id); 409 ``inn_taken`` when the holder is one the caller may not see (its id is
  not told). Without ``responsible_id`` the caller is responsible.
- ``PATCH /api/v1/companies/{id}`` (CompanyPatch) — a bad INN/KPP is 422 with the field's
  error ("the INN's check digit is wrong"); an INN already set never changes (422
  ``inn_fixed``); another company's INN is 409 ``inn_taken``.
- ``POST /api/v1/companies/{id}/contacts`` ``{"contact_id"}`` — the contact joins it.
- ``DELETE /api/v1/companies/{id}/contacts/{contact_id}`` — the contact leaves it.

Visibility: inbox/access.py (``sees_company``, ``company_filter``); a company not visible
answers 404. The responsible, if given, must be someone the caller may hand work to.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from crm_store import companies
from crm_store.companies import CompanyData, CompanyError, CompanyPatch, CompanyType
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.contacts_api import visible_contact
from inbox.paging import cursor_of, older_than
from inbox.views import ContactView, EntityView, View

TAG = "companies"
RELATED_LIMIT = 200


class CompanyView(View):
    name: str
    inn: str | None = None
    kpp: str | None = None
    type: str = "customer"
    responsible_id: str | None = None
    address: str | None = None
    fields: dict[str, object] = Field(default_factory=dict)


class CompanyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(default=None, min_length=1, max_length=200)
    type: CompanyType | None = None
    responsible: str | None = Field(default=None, max_length=128, description="a user id or me")
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=200)


class CompanyPage(BaseModel):
    items: list[CompanyView]
    next_cursor: str | None


class CompanyDetail(BaseModel):
    company: CompanyView
    contacts: list[ContactView]
    leads: list[EntityView]
    deals: list[EntityView]


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: str = Field(min_length=1, max_length=128)


class Linked(BaseModel):
    company_id: str
    contact_id: str
    changed: bool = Field(description="false: it already was (or was not) linked")


async def visible_company(call: Call, company_id: str | None = None) -> Document:
    cid = company_id or call.path("id")
    doc = await companies.get(call.svc.store, cid)
    svc = call.svc
    if (
        doc is None
        or doc.get("deleted")
        or not await access.sees_company(svc.store, svc.config, call.principal, doc)
    ):
        raise ApiError(404, "not_found", f"no company {cid}")
    return doc


def _company_error(exc: CompanyError, *, visible: bool) -> ApiError:
    if exc.code == "not_found":
        return ApiError(404, "not_found", str(exc))
    if exc.code == "inn_fixed":
        errors = [{"in": "body", "field": "inn", "message": str(exc)}]
        return ApiError(422, "inn_fixed", str(exc), errors=errors)
    detail = str(exc) if visible else "another company has this INN"
    extra = {"company_id": exc.company_id} if visible else {}
    return ApiError(409, "inn_taken", detail, **extra)


async def _detail(call: Call, doc: Document) -> CompanyDetail:
    store, cid = call.svc.store, doc["_id"]
    live = {"company_id": cid, "deleted": {"$ne": True}}
    people = [
        ContactView.of(c)
        async for c in store.contacts.find(
            {**live, "merged_into": None}, sort=[("created_at", -1)], limit=RELATED_LIMIT
        )
    ]
    related: dict[str, list[EntityView]] = {"lead": [], "deal": []}
    for kind in ("lead", "deal"):
        async for d in store[f"{kind}s"].find(live, sort=[("created_at", -1)], limit=RELATED_LIMIT):
            related[kind].append(EntityView.of_kind(kind, d))
    return CompanyDetail(
        company=CompanyView.of(doc), contacts=people, leads=related["lead"], deals=related["deal"]
    )


@route(
    "GET",
    "/api/v1/companies",
    summary="Companies the caller may see, newest first; q searches name and INN",
    tag=TAG,
    query=CompanyQuery,
    response=CompanyPage,
)
async def list_companies(call: Call) -> CompanyPage:
    q = call.q(CompanyQuery)
    svc = call.svc
    parts: list[Document] = [
        await access.company_filter(svc.store, svc.config, call.principal),
        {"deleted": {"$ne": True}},
    ]
    if q.q:
        parts.append(companies.text_filter(q.q))
    if q.type:
        parts.append({"type": q.type})
    if q.responsible:
        who = call.principal.user.id if q.responsible == "me" else q.responsible
        parts.append({"responsible_id": who})
    if q.cursor:
        parts.append(older_than(q.cursor, "created_at"))
    docs = [
        d
        async for d in companies.companies(svc.store).find(
            {"$and": [p for p in parts if p]},
            sort=[("created_at", -1), ("_id", -1)],
            limit=q.limit + 1,
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    cursor = cursor_of(docs[-1], "created_at") if more and docs else None
    return CompanyPage(items=[CompanyView.of(d) for d in docs], next_cursor=cursor)


@route(
    "GET",
    "/api/v1/companies/{id}",
    summary="One company with its contacts, leads and deals",
    tag=TAG,
    response=CompanyDetail,
    errors=(404,),
)
async def get_company(call: Call) -> CompanyDetail:
    return await _detail(call, await visible_company(call))


@route(
    "POST",
    "/api/v1/companies",
    summary="Create a company (an INN already held answers that company)",
    tag=TAG,
    body=CompanyData,
    response=CompanyView,
    status=201,
    errors=(409,),
)
async def create_company(call: Call) -> CompanyView:
    body = call.b(CompanyData)
    svc, who = call.svc, call.principal
    if body.responsible_id is not None:
        access.require_assignable(svc.config, who, body.responsible_id)
    else:
        body = body.model_copy(update={"responsible_id": who.user.id})
    doc, _ = await companies.create(svc.store, body, by=who.user.id)
    if not await access.sees_company(svc.store, svc.config, who, doc):
        raise ApiError(409, "inn_taken", "another company has this INN")
    return CompanyView.of(doc)


@route(
    "PATCH",
    "/api/v1/companies/{id}",
    summary="Edit a company: name, INN, KPP, type, responsible, address, fields",
    tag=TAG,
    body=CompanyPatch,
    response=CompanyView,
    errors=(404, 409),
)
async def patch_company(call: Call) -> CompanyView:
    body = call.b(CompanyPatch)
    doc = await visible_company(call)
    svc, who = call.svc, call.principal
    if body.responsible_id is not None:
        access.require_assignable(svc.config, who, body.responsible_id)
    try:
        fresh = await companies.update(svc.store, doc["_id"], body, by=who.user.id)
    except CompanyError as exc:
        visible = exc.company_id is not None and await access.sees_company(
            svc.store, svc.config, who, await companies.get(svc.store, exc.company_id)
        )
        raise _company_error(exc, visible=visible) from None
    return CompanyView.of(fresh)


@route(
    "POST",
    "/api/v1/companies/{id}/contacts",
    summary="Make a contact one of the company's",
    tag=TAG,
    body=LinkBody,
    response=Linked,
    errors=(404,),
)
async def link_contact(call: Call) -> Linked:
    contact_id = call.b(LinkBody).contact_id
    doc = await visible_company(call)
    await visible_contact(call, contact_id, field="contact_id")
    changed = await companies.link_contact(
        call.svc.store, doc["_id"], contact_id, by=call.principal.user.id
    )
    return Linked(company_id=doc["_id"], contact_id=contact_id, changed=changed)


@route(
    "DELETE",
    "/api/v1/companies/{id}/contacts/{contact_id}",
    summary="The contact leaves the company",
    tag=TAG,
    response=Linked,
    errors=(404,),
)
async def unlink_contact(call: Call) -> Linked:
    doc = await visible_company(call)
    contact_id = call.path("contact_id")
    await visible_contact(call, contact_id)
    changed = await companies.unlink_contact(
        call.svc.store, doc["_id"], contact_id, by=call.principal.user.id
    )
    return Linked(company_id=doc["_id"], contact_id=contact_id, changed=changed)
