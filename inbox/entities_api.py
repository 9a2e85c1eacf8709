"""Leads and deals for operators: list, read, edit fields, move stage, convert, delete.

- ``GET /api/v1/leads`` · ``GET /api/v1/deals`` — filters pipeline, stage, responsible,
  open; newest first; cursor pages.
- ``GET /api/v1/leads/{id}`` · ``/deals/{id}`` — with the contact and the tasks.
- ``PATCH …/{id}`` ``{"title", "fields": {name: value | null}, "responsible_id"}``; a
  deal also ``"items": [{name, quantity, unit, price}]`` — its line items (the field
  ``items`` documents fill their table from; ``[]`` empties it).
- ``POST …/{id}/stage`` ``{"stage_id"}`` — through the stage guards (crm_store/stages.py):
  a refusal is 422 ``stage_refused``; ``errors`` holds one ``{field, message}`` per reason,
  ``field`` being ``fields.<name>`` for a missing required field ("required to enter …")
  and for each field an unmet entry condition tests (its message: "the payment due date
  is set"), else ``stage_id`` (a backward move); ``missing_fields`` and ``unmet`` list the
  same reasons by kind.
- ``POST /api/v1/leads/{id}/convert`` — the lead becomes a deal (crm_store/conversion.py).
- ``DELETE …/{id}`` — directors and admins: soft delete.
- ``GET /api/v1/pipelines`` — the pipelines and their stages (what a screen offers).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.models import Pipeline, PipelineKind
from crm_store import companies, entities, tasks
from crm_store.companies import CompanyData
from crm_store.conversion import convert
from crm_store.entities import EntityError
from crm_store.stages import StageError, move_stage
from crm_store.store import Document
from inbox import access
from inbox.api import Call, route
from inbox.auth import ApiError
from inbox.paging import cursor_of, older_than
from inbox.views import ContactView, EntityView

Kind = Literal["lead", "deal"]
FieldValue = str | int | float | bool | list[str] | None
MAX_FIELDS = 100


class EntityQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(default=None, max_length=128)
    stage: str | None = Field(default=None, max_length=128)
    responsible: str | None = Field(default=None, max_length=128, description="a user id or me")
    open: bool | None = None
    cursor: str | None = Field(default=None, max_length=500)
    limit: int = Field(default=50, ge=1, le=200)


class EntityPage(BaseModel):
    items: list[EntityView]
    next_cursor: str | None


class TaskItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    title: str
    status: str
    assignee_id: str | None = None
    deadline: datetime | None = None
    checklist: list[dict[str, Any]] = Field(default_factory=list)


class EntityDetail(BaseModel):
    entity: EntityView
    contact: ContactView | None
    tasks: list[TaskItem]


class LineItem(BaseModel):
    """One line of a deal's items (docs/documents.md): what a template's table lists."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=1000)
    quantity: Decimal = Field(default=Decimal(1), gt=0, le=10**9, decimal_places=3)
    unit: str = Field(default="шт.", min_length=1, max_length=32)
    price: Decimal = Field(ge=0, lt=10**13, decimal_places=2, description="per unit, roubles")

    def stored(self) -> dict[str, Any]:
        """As the deal field holds it: numbers as JSON numbers (whole ones as ints)."""

        def num(d: Decimal) -> int | float:
            return int(d) if d == d.to_integral_value() else float(d)

        return {
            "name": self.name,
            "quantity": num(self.quantity),
            "unit": self.unit,
            "price": num(self.price),
        }


class EntityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=500)
    fields: dict[str, FieldValue] | None = Field(
        default=None, description="values to set; null clears a field"
    )
    responsible_id: str | None = Field(default=None, min_length=1, max_length=128)
    items: list[LineItem] | None = Field(
        default=None, max_length=500, description="deals: the line items (replaced whole)"
    )

    @field_validator("fields")
    @classmethod
    def _names(cls, value: dict[str, FieldValue] | None) -> dict[str, FieldValue] | None:
        if value is None:
            return None
        if len(value) > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} fields at once")
        for name in value:
            if not name or len(name) > 64 or not name.replace("_", "a").isalnum():
                raise ValueError(f"{name!r} is not a field name (letters, digits, _)")
        return value


class StageMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage_id: str = Field(min_length=1, max_length=128)


class ConvertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline_id: str | None = Field(default=None, max_length=128, description="a deal pipeline")
    stage_id: str | None = Field(default=None, max_length=128, description="default: its first")
    title: str | None = Field(default=None, min_length=1, max_length=500)
    company_id: str | None = Field(
        default=None, max_length=128, description="an existing company the deal is with"
    )
    company: CompanyData | None = Field(
        default=None, description="a company to create (an INN already held: that company)"
    )


class Deleted(BaseModel):
    id: str
    deleted: bool = Field(description="false: it was deleted before")


class StageView(BaseModel):
    id: str
    name: str
    outcome: str
    final: bool
    required_fields: list[str]


class PipelineView(BaseModel):
    id: str
    kind: str
    name: str
    stages: list[StageView]


class Pipelines(BaseModel):
    pipelines: list[PipelineView]


def _coll(kind: Kind) -> str:
    return f"{kind}s"


async def visible_entity(call: Call, kind: Kind, entity_id: str | None = None) -> Document:
    eid = entity_id or call.path("id")
    doc = await call.svc.store[_coll(kind)].find_one({"_id": eid})
    if (
        doc is None
        or doc.get("deleted")
        or not access.sees_entity(call.svc.config, call.principal, doc)
    ):
        raise ApiError(404, "not_found", f"no {kind} {eid}")
    return doc


async def _list(call: Call, kind: Kind) -> EntityPage:
    q = call.q(EntityQuery)
    parts: list[Document] = [
        access.entity_filter(call.svc.config, call.principal),
        {"deleted": {"$ne": True}},
    ]
    if q.pipeline:
        parts.append({"pipeline_id": q.pipeline})
    if q.stage:
        parts.append({"stage_id": q.stage})
    if q.responsible:
        who = call.principal.user.id if q.responsible == "me" else q.responsible
        parts.append({"responsible_id": who})
    if q.open is not None:
        parts.append({"open": q.open})
    if q.cursor:
        parts.append(older_than(q.cursor, "created_at"))
    query = {"$and": [p for p in parts if p]}
    docs = [
        d
        async for d in call.svc.store[_coll(kind)].find(
            query, sort=[("created_at", -1), ("_id", -1)], limit=q.limit + 1
        )
    ]
    more = len(docs) > q.limit
    docs = docs[: q.limit]
    cursor = cursor_of(docs[-1], "created_at") if more and docs else None
    return EntityPage(items=[EntityView.of_kind(kind, d) for d in docs], next_cursor=cursor)


async def _detail(call: Call, kind: Kind) -> EntityDetail:
    doc = await visible_entity(call, kind)
    contact = await call.svc.store.contacts.find_one({"_id": doc.get("contact_id")})
    found = await tasks.for_entity(call.svc.store, doc["_id"])
    return EntityDetail(
        entity=EntityView.of_kind(kind, doc),
        contact=ContactView.of(contact) if contact else None,
        tasks=[TaskItem.model_validate({**t, "id": t["_id"]}) for t in found],
    )


async def _patch(call: Call, kind: Kind) -> EntityView:
    body = call.b(EntityPatch)
    doc = await visible_entity(call, kind)
    store, by = call.svc.store, call.principal.user.id
    if body.responsible_id is not None:
        access.require_assignable(call.svc.config, call.principal, body.responsible_id)
    values: dict[str, Any] = dict(body.fields or {})
    if body.items is not None:
        if kind != "deal":
            raise ApiError(
                422,
                "invalid_request",
                "line items belong to deals",
                errors=[{"in": "body", "field": "items", "message": "deals only"}],
            )
        values["items"] = [item.stored() for item in body.items]
    try:
        if values:
            await entities.set_fields(store, kind, doc["_id"], values, by=by)
        if body.responsible_id is not None:
            await entities.set_responsible(store, kind, doc["_id"], body.responsible_id, by=by)
    except EntityError:
        raise ApiError(404, "not_found", f"no {kind} {doc['_id']}") from None
    if body.title is not None:
        await store[_coll(kind)].update_one({"_id": doc["_id"]}, {"$set": {"title": body.title}})
    fresh = await store[_coll(kind)].find_one({"_id": doc["_id"]})
    assert fresh is not None
    return EntityView.of_kind(kind, fresh)


async def _stage(call: Call, kind: Kind) -> EntityView:
    target = call.b(StageMove).stage_id
    doc = await visible_entity(call, kind)
    pipeline = call.svc.config.pipeline(doc["pipeline_id"])
    try:
        moved = await move_stage(
            call.svc.store, kind, doc["_id"], pipeline, target, by=call.principal.user.id
        )
    except StageError as exc:
        if exc.code == "not_found":
            raise ApiError(404, "not_found", str(exc)) from None
        if exc.code == "conflict":
            raise ApiError(409, "conflict", str(exc)) from None
        if exc.code == "unknown_stage":
            raise ApiError(
                422,
                "unknown_stage",
                str(exc),
                errors=[{"in": "body", "field": "stage_id", "message": str(exc)}],
            ) from None
        # Every reason names the field it is about (fields.<name>: a required field, or a
        # field an entry condition tests), so a screen can offer an input for it; a reason
        # no field helps with (a backward move) is about the stage_id.
        errors = [
            {
                "in": "body",
                "field": f"fields.{name}" if name else "stage_id",
                "message": message,
            }
            for name, message in exc.problems
        ]
        raise ApiError(
            422,
            "stage_refused",
            str(exc),
            missing_fields=exc.missing_fields,
            unmet=exc.unmet,
            errors=errors,
        ) from None
    return EntityView.of_kind(kind, {**doc, **moved})


async def _delete(call: Call, kind: Kind) -> Deleted:
    access.require_delete(call.principal)
    doc = await visible_entity(call, kind)
    done = await entities.delete_duplicate(
        call.svc.store, kind, doc["_id"], by=call.principal.user.id, reason="deleted"
    )
    return Deleted(id=doc["_id"], deleted=done)


def _declare(kind: Kind) -> None:
    base = f"/api/v1/{kind}s"
    tag = f"{kind}s"

    @route(
        "GET",
        base,
        summary=f"{kind.title()}s the caller may see",
        tag=tag,
        query=EntityQuery,
        response=EntityPage,
    )
    async def list_entities(call: Call) -> EntityPage:
        return await _list(call, kind)

    @route(
        "GET",
        f"{base}/{{id}}",
        summary=f"One {kind} with its contact and tasks",
        tag=tag,
        response=EntityDetail,
        errors=(404,),
    )
    async def get_entity(call: Call) -> EntityDetail:
        return await _detail(call, kind)

    @route(
        "PATCH",
        f"{base}/{{id}}",
        summary=f"Edit a {kind}: title, fields, responsible",
        tag=tag,
        body=EntityPatch,
        response=EntityView,
        errors=(404,),
    )
    async def patch_entity(call: Call) -> EntityView:
        return await _patch(call, kind)

    @route(
        "POST",
        f"{base}/{{id}}/stage",
        summary=f"Move a {kind} to a stage (guards apply)",
        tag=tag,
        body=StageMove,
        response=EntityView,
        errors=(404, 409),
    )
    async def move_entity(call: Call) -> EntityView:
        return await _stage(call, kind)

    @route(
        "DELETE",
        f"{base}/{{id}}",
        summary=f"Delete a {kind} (directors and admins)",
        tag=tag,
        response=Deleted,
        errors=(404,),
    )
    async def delete_entity(call: Call) -> Deleted:
        return await _delete(call, kind)

    for fn in (list_entities, get_entity, patch_entity, move_entity, delete_entity):
        fn.__name__ = f"{fn.__name__.removesuffix('entity').removesuffix('entities')}{kind}"


_declare("lead")
_declare("deal")


def _deal_pipeline(call: Call, body: ConvertBody) -> Pipeline:
    config = call.svc.config
    if body.pipeline_id is None:
        found = next((p for p in config.pipelines.pipelines if p.kind is PipelineKind.DEAL), None)
        if found is None:
            raise ApiError(422, "no_deal_pipeline", "no deal pipeline is configured")
        return found
    pipeline = next((p for p in config.pipelines.pipelines if p.id == body.pipeline_id), None)
    if pipeline is None or pipeline.kind is not PipelineKind.DEAL:
        raise ApiError(
            422,
            "invalid_request",
            f"{body.pipeline_id!r} is not a deal pipeline",
            errors=[{"in": "body", "field": "pipeline_id", "message": "not a deal pipeline"}],
        )
    return pipeline


async def _conversion_company(call: Call, body: ConvertBody, lead: Document) -> str | None:
    """The company a conversion names (docs/companies.md): an existing one the caller sees,
    or one created from ``company`` (deduplicated by INN). Neither: the contact's."""
    svc, who = call.svc, call.principal
    if body.company_id is not None and body.company is not None:
        raise ApiError(
            422,
            "invalid_request",
            "give company_id or company, not both",
            errors=[{"in": "body", "field": "company", "message": "company_id is given"}],
        )
    if body.company_id is not None:
        found = await companies.get(svc.store, body.company_id)
        if not await access.sees_company(svc.store, svc.config, who, found):
            raise ApiError(
                404,
                "not_found",
                f"no company {body.company_id}",
                errors=[{"in": "body", "field": "company_id", "message": "no such company"}],
            )
        return body.company_id
    if body.company is not None:
        data = body.company
        if data.responsible_id is not None:
            access.require_assignable(svc.config, who, data.responsible_id)
        else:
            data = data.model_copy(update={"responsible_id": lead.get("responsible_id")})
        doc, _ = await companies.create(svc.store, data, by=who.user.id)
        if not await access.sees_company(svc.store, svc.config, who, doc):
            raise ApiError(409, "inn_taken", "another company has this INN")
        return str(doc["_id"])
    contact = await svc.store.contacts.find_one({"_id": lead.get("contact_id")}, {"company_id": 1})
    found_id = (contact or {}).get("company_id")
    return found_id if isinstance(found_id, str) else None


@route(
    "POST",
    "/api/v1/leads/{id}/convert",
    summary="Convert a lead into a deal for its contact (twice: the same deal)",
    tag="leads",
    body=ConvertBody,
    response=EntityView,
    status=201,
    errors=(404, 409),
)
async def convert_lead(call: Call) -> EntityView:
    body = call.b(ConvertBody)
    lead = await visible_entity(call, "lead")
    if lead.get("converted_to"):
        deal = await call.svc.store.deals.find_one({"_id": lead["converted_to"]})
        if deal is not None:
            return EntityView.of_kind("deal", deal)
    if not lead.get("open"):
        raise ApiError(409, "conflict", f"lead {lead['_id']} is closed ({lead.get('outcome')})")
    pipeline = _deal_pipeline(call, body)
    company_id = await _conversion_company(call, body, lead)
    stage = pipeline.stage(body.stage_id) if body.stage_id else pipeline.first_stage
    if stage is None or stage.final:
        raise ApiError(
            422,
            "unknown_stage",
            f"{body.stage_id!r} is not an open stage of {pipeline.id}",
            errors=[{"in": "body", "field": "stage_id", "message": "not an open stage"}],
        )
    deal = await convert(
        call.svc.store,
        lead,
        pipeline,
        stage.id,
        body.title,
        call.principal.user.id,
        lead_pipeline=next(
            (p for p in call.svc.config.pipelines.pipelines if p.id == lead.get("pipeline_id")),
            None,
        ),
        company_id=company_id,
    )
    return EntityView.of_kind("deal", deal)


@route(
    "GET",
    "/api/v1/pipelines",
    summary="The pipelines with their stages and required fields",
    tag="pipelines",
    response=Pipelines,
)
async def list_pipelines(call: Call) -> Pipelines:
    return Pipelines(
        pipelines=[
            PipelineView(
                id=p.id,
                kind=p.kind.value,
                name=p.name,
                stages=[
                    StageView(
                        id=s.id,
                        name=s.name,
                        outcome=s.outcome.value,
                        final=s.final,
                        required_fields=list(s.required_fields),
                    )
                    for s in p.stages
                ],
            )
            for p in call.svc.config.pipelines.pipelines
        ]
    )
