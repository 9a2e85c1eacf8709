"""The stage-move write path of leads and deals.

The rules (required fields, no backward moves) are checked by the caller against the
pipeline config; this module writes the move so that everything derived from it stays
true: ``open`` follows the stage, the open-lead / auto-deal guards are released when the
entity closes, the conversations pointing at it learn that their target closed, a lead
closed as spam marks its contact, and a ``*.stage_changed`` event is appended.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from config.models import Pipeline
from crm_store.events import append, event
from crm_store.store import Document, Store

Kind = Literal["lead", "deal"]


class StageError(ValueError):
    """The move is not allowed; ``field`` names what is missing, if anything."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def check_move(pipeline: Pipeline, entity: Document, stage_id: str) -> None:
    """Raise :class:`StageError` when ``entity`` may not enter ``stage_id``."""
    target = pipeline.stage(stage_id)
    if target is None:
        raise StageError(f"pipeline {pipeline.id} has no stage {stage_id!r}")
    fields: dict[str, object] = entity.get("fields", {})
    for name in target.required_fields:
        if fields.get(name) in (None, "", []):
            raise StageError(f"stage {stage_id} requires field {name!r}", field=name)
    current = pipeline.stage(str(entity.get("stage_id")))
    if pipeline.forbid_backward and current is not None and not target.final:
        ids = [s.id for s in pipeline.stages]
        if ids.index(stage_id) < ids.index(current.id):
            raise StageError(f"moving back from {current.id} to {stage_id} is not allowed")


async def move_stage(
    store: Store,
    kind: Kind,
    entity_id: str,
    pipeline: Pipeline,
    stage_id: str,
    by: str | None = None,
) -> Document:
    """Move a lead or deal to ``stage_id`` (checked by :func:`check_move`)."""
    coll = store.leads if kind == "lead" else store.deals
    entity = await coll.find_one({"_id": entity_id})
    if entity is None:
        raise StageError(f"no {kind} {entity_id}")
    check_move(pipeline, entity, stage_id)
    stage = pipeline.stage(stage_id)
    assert stage is not None
    at = datetime.now(UTC)
    guard = "open_contact" if kind == "lead" else "auto_open"
    update: dict[str, Document] = {
        "$set": {
            "stage_id": stage_id,
            "open": not stage.final,
            "stage_entered_at": at,
            "updated_at": at,
        },
    }
    if stage.final:
        update["$unset"] = {guard: ""}
        update["$set"]["closed_at"] = at
        update["$set"]["outcome"] = stage.outcome.value
    await coll.update_one({"_id": entity_id}, update)
    if stage.final:
        await store.conversations.update_many(
            {"target.id": entity_id}, {"$set": {"target.open": False}}
        )
        if stage.spam:
            await store.contacts.update_one({"_id": entity["contact_id"]}, {"$set": {"spam": True}})
    await append(
        store,
        [
            event(
                f"{kind}.stage_changed",
                {f"{kind}_id": entity_id, "contact_id": entity["contact_id"]},
                {
                    "from": entity.get("stage_id"),
                    "to": stage_id,
                    "by": by,
                    "pipeline_id": pipeline.id,
                    "final": stage.final,
                },
                key=[kind, entity_id, stage_id, at.isoformat()],
                at=at,
            )
        ],
    )
    entity.update(update["$set"])
    return entity
