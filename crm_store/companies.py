"""Companies: the organisations a business sells to, buys from or competes with.

Document (collection ``companies``): ``_id``, ``name``, ``inn``, ``kpp``, ``type``
(:data:`CompanyType`), ``responsible_id``, ``address``, ``fields`` {name: value},
``created_at``/``updated_at``/``created_by``. A contact belongs to at most one company
(``contacts.company_id``); leads, deals and documents name theirs in ``company_id``.

One company per INN, on any deployment: a company created with an INN has the ``_id``
:func:`id_for_inn` derives from it, so two concurrent creations (two operators converting
leads of the same firm) collide on the primary key and the second answers the first's
company — no unique secondary index needed (that would not hold on a sharded cluster).
A company created without an INN gets a random id; giving it an INN later is refused
when another company holds that INN (checked, not guarded against a race of two such
patches) and an INN once set never changes (the id would lie).

Every change appends its event (``company.created``, ``company.updated``,
``company.contact_linked``/``…_unlinked``; the responsible through crm_store/entities.py:
``company.responsible_changed``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymongo.errors import DuplicateKeyError

from crm_store import entities
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.inn import inn_problem, kpp_problem
from crm_store.store import Collection, Document, Store

CompanyType = Literal["customer", "partner", "supplier", "competitor", "other"]
FieldValue = str | int | float | bool | list[str] | None
MAX_FIELDS = 100


class CompanyError(ValueError):
    """The change cannot be made; ``code`` says why (not_found, inn_taken, inn_fixed)."""

    def __init__(self, code: str, message: str, company_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.company_id = company_id


def _inn(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if (why := inn_problem(value)) is not None:
        raise ValueError(why)
    return value


def _kpp(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().upper()
    if (why := kpp_problem(value)) is not None:
        raise ValueError(why)
    return value


def _field_names(value: dict[str, FieldValue] | None) -> dict[str, FieldValue] | None:
    if value is None:
        return None
    if len(value) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields at once")
    for name in value:
        if not name or len(name) > 64 or not name.replace("_", "a").isalnum():
            raise ValueError(f"{name!r} is not a field name (letters, digits, _)")
    return value


class CompanyData(BaseModel):
    """A new company (the API's body, a conversion's ``company``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=300)
    inn: str | None = Field(default=None, max_length=12, description="10 or 12 digits")
    kpp: str | None = Field(default=None, max_length=9)
    type: CompanyType = "customer"
    responsible_id: str | None = Field(default=None, min_length=1, max_length=128)
    address: str | None = Field(default=None, max_length=1000)
    fields: dict[str, FieldValue] = Field(default_factory=dict)

    _v_inn = field_validator("inn")(classmethod(lambda cls, v: _inn(v)))
    _v_kpp = field_validator("kpp")(classmethod(lambda cls, v: _kpp(v)))

    @field_validator("fields")
    @classmethod
    def _names(cls, value: dict[str, FieldValue]) -> dict[str, FieldValue]:
        return _field_names(value) or {}


class CompanyPatch(BaseModel):
    """Changes to a company; a ``fields`` value null clears that field."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=300)
    inn: str | None = Field(default=None, max_length=12)
    kpp: str | None = Field(default=None, max_length=9)
    type: CompanyType | None = None
    responsible_id: str | None = Field(default=None, min_length=1, max_length=128)
    address: str | None = Field(default=None, max_length=1000)
    fields: dict[str, FieldValue] | None = None

    _v_inn = field_validator("inn")(classmethod(lambda cls, v: _inn(v)))
    _v_kpp = field_validator("kpp")(classmethod(lambda cls, v: _kpp(v)))
    _v_fields = field_validator("fields")(classmethod(lambda cls, v: _field_names(v)))


def companies(store: Store) -> Collection:
    return store["companies"]


def id_for_inn(inn: str) -> str:
    """The ``_id`` of the company with this INN (see the module doc)."""
    return stable_id("company", "inn", inn)


async def get(store: Store, company_id: str) -> Document | None:
    doc: Document | None = await companies(store).find_one({"_id": company_id})
    return doc


async def by_inn(store: Store, inn: str) -> Document | None:
    """The company holding ``inn``: by its derived id, else one that got it by a patch."""
    return await get(store, id_for_inn(inn)) or await companies(store).find_one({"inn": inn})


def _refs(company_id: str, contact_id: str | None = None) -> dict[str, str | None]:
    refs: dict[str, str | None] = {"company_id": company_id}
    if contact_id is not None:
        refs["contact_id"] = contact_id
    return refs


async def create(
    store: Store, data: CompanyData, *, by: str | None = None, at: datetime | None = None
) -> tuple[Document, bool]:
    """Create a company; with an INN already held, the holder and False."""
    at = at or datetime.now(UTC)
    if data.inn is not None and (held := await by_inn(store, data.inn)) is not None:
        return held, False
    cid = id_for_inn(data.inn) if data.inn else stable_id("company", uuid.uuid4().hex)
    doc: Document = {
        "_id": cid,
        **data.model_dump(),
        "created_by": by,
        "created_at": at,
        "updated_at": at,
    }
    try:
        await companies(store).insert_one(doc)
    except DuplicateKeyError:
        existing = await get(store, cid)
        if existing is None:
            raise
        return existing, False
    created = {"name": doc["name"], "inn": doc["inn"], "type": doc["type"], "by": by}
    await append(store, [event("company.created", _refs(cid), created, key=[cid], at=at)])
    return doc, True


async def update(
    store: Store,
    company_id: str,
    patch: CompanyPatch,
    *,
    by: str | None = None,
    at: datetime | None = None,
) -> Document:
    """Apply ``patch``; the changed attributes are announced in one ``company.updated``."""
    at = at or datetime.now(UTC)
    doc = await get(store, company_id)
    if doc is None or doc.get("deleted"):
        raise CompanyError("not_found", f"no company {company_id}")
    sets: Document = {}
    unsets: Document = {}
    changed: dict[str, dict[str, Any]] = {}
    if patch.inn is not None and patch.inn != doc.get("inn"):
        if doc.get("inn"):
            raise CompanyError("inn_fixed", "the INN of a company does not change")
        holder = await by_inn(store, patch.inn)
        if holder is not None and holder["_id"] != company_id:
            raise CompanyError(
                "inn_taken", f"company {holder['_id']} has INN {patch.inn}", holder["_id"]
            )
    for name in ("name", "inn", "kpp", "type", "address"):
        new = getattr(patch, name)
        if new is not None and new != doc.get(name):
            sets[name] = new
            changed[name] = {"old": doc.get(name), "new": new}
    current: Mapping[str, Any] = doc.get("fields") or {}
    for name, value in (patch.fields or {}).items():
        if current.get(name) == value and (value is not None or name not in current):
            continue
        changed[f"fields.{name}"] = {"old": current.get(name), "new": value}
        if value is None:
            unsets[f"fields.{name}"] = ""
        else:
            sets[f"fields.{name}"] = value
    if changed:
        update_doc: Document = {"$set": {**sets, "updated_at": at}}
        if unsets:
            update_doc["$unset"] = unsets
        await companies(store).update_one({"_id": company_id}, update_doc)
        await append(
            store,
            [
                event(
                    "company.updated",
                    _refs(company_id),
                    {"changes": changed, "by": by},
                    key=["updated", company_id, uuid.uuid4().hex],
                    at=at,
                )
            ],
        )
    if patch.responsible_id is not None:
        await entities.set_responsible(
            store, "company", company_id, patch.responsible_id, by=by, at=at
        )
    fresh = await get(store, company_id)
    assert fresh is not None
    return fresh


async def link_contact(
    store: Store, company_id: str, contact_id: str, *, by: str | None, at: datetime | None = None
) -> bool:
    """Make the contact one of the company's (leaving any other); True if it changed."""
    at = at or datetime.now(UTC)
    result = await store.contacts.update_one(
        {"_id": contact_id, "company_id": {"$ne": company_id}},
        {"$set": {"company_id": company_id, "updated_at": at}},
    )
    if not result.modified_count:
        return False
    await append(
        store,
        [
            event(
                "company.contact_linked",
                _refs(company_id, contact_id),
                {"by": by},
                key=["linked", company_id, contact_id, uuid.uuid4().hex],
                at=at,
            )
        ],
    )
    return True


async def unlink_contact(
    store: Store, company_id: str, contact_id: str, *, by: str | None, at: datetime | None = None
) -> bool:
    at = at or datetime.now(UTC)
    result = await store.contacts.update_one(
        {"_id": contact_id, "company_id": company_id},
        {"$unset": {"company_id": ""}, "$set": {"updated_at": at}},
    )
    if not result.modified_count:
        return False
    await append(
        store,
        [
            event(
                "company.contact_unlinked",
                _refs(company_id, contact_id),
                {"by": by},
                key=["unlinked", company_id, contact_id, uuid.uuid4().hex],
                at=at,
            )
        ],
    )
    return True


def text_filter(text: str) -> Document:
    """Companies whose name contains ``text`` (any case), or whose INN starts with it."""
    ors: list[Document] = [{"name": {"$regex": re.escape(text), "$options": "i"}}]
    if text.isdigit():
        ors.append({"inn": {"$regex": "^" + re.escape(text)}})
    return {"$or": ors}
