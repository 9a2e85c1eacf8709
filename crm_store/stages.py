"""The stage-move write path of leads and deals, and the stage guards.

Every move — an operator's through the API, a robot's through automation — goes through
:func:`move_stage`, which refuses what the pipeline config forbids (:func:`check_move`):

- **required fields** of the target stage (``required_fields``);
- **conditional entry** (``requires``: conditions on the fields, each with its message —
  "Won" only when the closing documents are signed and the order is paid in full);
- **documents** (``requires_documents``: a document of a type in at least a status —
  a signed acceptance act; crm_store/paperwork.py, docs/documents.md);
- **backward moves**: anywhere in a ``forbid_backward`` pipeline, and back past a stage
  marked ``no_return`` once the lead/deal has reached it. Final stages stay reachable.

A refusal (:class:`StageError`) lists everything missing at once, each with the field it
is about (:attr:`StageError.problems`: a required field, or the fields an entry condition
looks at — "the payment due date is set" names ``payment_due_date``), so a screen can offer
an input for it. The move itself keeps
everything derived from it true: ``open`` follows the stage, the open-lead / auto-deal
guards are released when the entity closes, the conversations pointing at it learn that
their target closed, a lead closed as spam marks its contact, and a ``*.stage_changed``
event is appended. The update is conditional on the stage the checks saw
(:func:`move_seen`), so two moves at once cannot both pass the guards of different
starting points: of several moves from one reading, exactly one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from automation.conditions import Snapshot, matches
from automation.rules import Condition
from config.models import Pipeline, Stage
from crm_store import paperwork
from crm_store.events import append, event
from crm_store.store import Document, Store

Kind = Literal["lead", "deal"]


class StageError(ValueError):
    """The move is not allowed.

    ``code``: ``stage_refused`` (a guard said no), ``unknown_stage``, ``not_found``,
    ``conflict`` (the entity moved meanwhile). ``missing_fields`` are the required fields
    that are empty, ``unmet`` the messages of the entry conditions and direction rules that
    do not hold; ``field`` is the first missing field (or None). ``problems`` pairs every
    reason with the field it is about (None: the move's direction, no field helps).
    """

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        code: str = "stage_refused",
        missing_fields: Sequence[str] = (),
        unmet: Sequence[str] = (),
        problems: Sequence[tuple[str | None, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.missing_fields = list(missing_fields)
        self.field = field if field is not None else next(iter(self.missing_fields), None)
        self.unmet = list(unmet)
        self.problems = list(problems)

    def details(self) -> dict[str, Any]:
        """What a problem+json answer carries."""
        return {"code": self.code, "missing_fields": self.missing_fields, "unmet": self.unmet}


def fields_named(cond: Condition) -> list[str]:
    """The entity fields a condition tests (its ``fields`` keys, nested ones too), in
    order, each once: what an operator fills in to meet it."""
    out = list(cond.fields or {})
    for sub in [*(cond.all or []), *(cond.any or [])]:
        out += fields_named(sub)
    if cond.not_ is not None:
        out += fields_named(cond.not_)
    return list(dict.fromkeys(out))


def _index(pipeline: Pipeline, stage_id: str) -> int:
    return next(i for i, s in enumerate(pipeline.stages) if s.id == stage_id)


def _backward(pipeline: Pipeline, entity: Document, target: Stage) -> str | None:
    """Why moving back to ``target`` is forbidden, if it is."""
    current = pipeline.stage(str(entity.get("stage_id")))
    if current is None or target.final:
        return None
    to, at = _index(pipeline, target.id), _index(pipeline, current.id)
    if pipeline.forbid_backward and to < at:
        return f"moving back from {current.id} to {target.id} is not allowed"
    reached = set(entity.get("no_return_reached") or [])
    for stage in pipeline.stages[to + 1 :]:
        if not stage.no_return:
            continue
        passed = stage.id in reached or (not current.final and at >= _index(pipeline, stage.id))
        if passed:
            return (
                f"it has reached {stage.id}: moving back to {target.id} is not allowed "
                f"(no return after {stage.id})"
            )
    return None


def check_move(
    pipeline: Pipeline, entity: Document, stage_id: str, documents: Sequence[Document] = ()
) -> None:
    """Raise :class:`StageError` when ``entity`` may not enter ``stage_id``, listing every
    reason at once. ``documents``: the deal's documents (crm_store/paperwork.py) the
    stage's ``requires_documents`` are checked against."""
    target = pipeline.stage(stage_id)
    if target is None:
        raise StageError(f"pipeline {pipeline.id} has no stage {stage_id!r}", code="unknown_stage")
    if entity.get("deleted"):
        raise StageError("it was deleted (a duplicate)", code="not_found")
    fields: dict[str, object] = entity.get("fields") or {}
    missing = [n for n in target.required_fields if fields.get(n) in (None, "", [])]
    snap = Snapshot.of(str(entity.get("kind") or "deal"), {"_id": "", **entity})
    failed = [r for r in target.requires if not matches(r.if_, snap)]
    unmet = [r.message for r in failed]
    problems: list[tuple[str | None, str]] = [
        (name, f"required to enter {stage_id}") for name in missing
    ]
    for r in failed:
        named: list[str | None] = [*fields_named(r.if_)] or [None]
        problems += [(name, r.message) for name in named]
    for message in paperwork.missing(target.requires_documents, documents):
        unmet.append(message)
        problems.append((None, message))
    back = _backward(pipeline, entity, target)
    if back is not None:
        unmet.append(back)
        problems.append((None, back))
    if missing or unmet:
        reasons = [f"stage {stage_id} requires field {name!r}" for name in missing]
        reasons += [f"{message} (not met)" if message != back else message for message in unmet]
        raise StageError("; ".join(reasons), missing_fields=missing, unmet=unmet, problems=problems)


def stage_changed(
    kind: Kind,
    entity: Document,
    pipeline: Pipeline,
    from_stage: str | None,
    to_stage: Stage,
    *,
    by: str | None,
    at: datetime,
    key: Sequence[str],
) -> Document:
    """The ``<kind>.stage_changed`` event of a move."""
    return event(
        f"{kind}.stage_changed",
        {f"{kind}_id": entity["_id"], "contact_id": entity.get("contact_id")},
        {
            "from": from_stage,
            "to": to_stage.id,
            "by": by,
            "pipeline_id": pipeline.id,
            "final": to_stage.final,
        },
        key=key,
        at=at,
    )


async def move_stage(
    store: Store,
    kind: Kind,
    entity_id: str,
    pipeline: Pipeline,
    stage_id: str,
    by: str | None = None,
    *,
    at: datetime | None = None,
    key: str | None = None,
) -> Document:
    """Move a lead or deal to ``stage_id`` (checked by :func:`check_move`).

    ``key`` makes the event id deterministic (automation passes its idempotency key);
    ``at`` is the time of the move (default now)."""
    coll = store.leads if kind == "lead" else store.deals
    entity = await coll.find_one({"_id": entity_id})
    if entity is None:
        raise StageError(f"no {kind} {entity_id}", code="not_found")
    return await move_seen(store, kind, entity, pipeline, stage_id, by, at=at, key=key)


async def move_seen(
    store: Store,
    kind: Kind,
    entity: Document,
    pipeline: Pipeline,
    stage_id: str,
    by: str | None = None,
    *,
    at: datetime | None = None,
    key: str | None = None,
) -> Document:
    """Move ``entity`` — the lead/deal as the caller read it — to ``stage_id``: checked
    against that reading, written only if the stored stage is still the one read (else
    ``conflict``)."""
    coll = store.leads if kind == "lead" else store.deals
    entity_id = entity["_id"]
    entity = dict(entity)
    wanted = pipeline.stage(stage_id)
    docs: list[Document] = []
    if wanted is not None and wanted.requires_documents and kind == "deal":
        types = [r.type for r in wanted.requires_documents]
        docs = await paperwork.of_deal(store, entity_id, types)
    check_move(pipeline, {**entity, "kind": kind}, stage_id, docs)
    stage = pipeline.stage(stage_id)
    assert stage is not None
    at = at or datetime.now(UTC)
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
    if stage.no_return:
        update["$addToSet"] = {"no_return_reached": stage_id}
    result = await coll.update_one(
        {"_id": entity_id, "stage_id": entity.get("stage_id"), "deleted": {"$ne": True}}, update
    )
    if result.matched_count == 0:
        raise StageError(f"the {kind} changed meanwhile; try again", code="conflict")
    if stage.final:
        await store.conversations.update_many(
            {"target.id": entity_id}, {"$set": {"target.open": False}}
        )
        if stage.spam:
            await store.contacts.update_one({"_id": entity["contact_id"]}, {"$set": {"spam": True}})
    event_key = [key] if key is not None else [kind, entity_id, stage_id, at.isoformat()]
    await append(
        store,
        [
            stage_changed(
                kind, entity, pipeline, entity.get("stage_id"), stage, by=by, at=at, key=event_key
            )
        ],
    )
    entity.update(update["$set"])
    return entity
