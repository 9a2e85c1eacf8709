"""A contact's custom fields (``fields`` on the contact document): scalar values an
operator sets — the eco-goods wholesaler's «Является ЛПР» (``is_decision_maker``). Set
through ``PATCH /api/v1/contacts/{id}`` and the scenario runner's ``contact_fields`` step."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from crm_store.store import Document, Store

# At most this many fields on one contact.
MAX_FIELDS = 50
Scalar = str | bool | int | float


class TooManyFields(ValueError):
    """The change would leave the contact more than :data:`MAX_FIELDS` fields."""


async def set_fields(
    store: Store,
    contact: Document,
    values: Mapping[str, Scalar | None],
    *,
    extra: Mapping[str, object] | None = None,
    at: datetime | None = None,
) -> None:
    """Set ``values`` on ``contact`` (None removes a field; the others are kept), with
    ``extra`` top-level keys in the same write. Raises :class:`TooManyFields`."""
    kept = {**(contact.get("fields") or {}), **values}
    if sum(v is not None for v in kept.values()) > MAX_FIELDS:
        raise TooManyFields(f"a contact has at most {MAX_FIELDS} fields")
    sets: Document = {f"fields.{k}": v for k, v in values.items() if v is not None}
    unsets: Document = {f"fields.{k}": "" for k, v in values.items() if v is None}
    update: Document = {"$set": {**sets, **(extra or {}), "updated_at": at or datetime.now(UTC)}}
    if unsets:
        update["$unset"] = unsets
    await store.contacts.update_one({"_id": contact["_id"]}, update)
