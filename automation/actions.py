"""Carrying out planned actions (the I/O part), each exactly once per idempotency key.

Creating a task, a notification, a copy of a deal or an outbound message is idempotent
by itself: the document's id is (derived from) the key, and its event id too. The other
actions go through the ledger (:mod:`crm_store.automation_log`): what they saw before
acting is recorded first, so a re-run after a crash does the same thing and announces it
the same way.

Errors: :class:`ActionError` is final for that action (a refused stage move, no
conversation to write to): it is recorded as ``automation.failed`` and the rule's next
actions go on. :class:`RetryLater` (a webhook that failed, for now) and store errors
propagate: the whole firing or event is retried, and what was done is skipped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from automation import document_actions, expressions, people, sms_actions, templates
from automation.calendar import WorkingCalendar
from automation.clock import Clock
from automation.conditions import Snapshot
from automation.durations import Duration
from automation.evaluate import Planned, field_moment
from automation.rules import (
    CallWebhook,
    CascadeResponsible,
    CloseAsJunk,
    CopyToPipeline,
    CreateTask,
    DeleteDuplicate,
    MoveToStage,
    NextNumber,
    Notify,
    SendMessage,
    SetField,
    StartProcess,
    TemplateSend,
)
from channels import whatsapp_templates as wa_templates
from channels.base import SendError
from channels.signing import sign
from config.models import AppConfig, Pipeline
from crm_store import automation_log as ledger
from crm_store import entities, notifications, outbox, stages, tasks, timers
from crm_store import routing_store as rs
from crm_store.documents import stable_id
from crm_store.events import append, event
from crm_store.store import Document, Store

log = structlog.get_logger("omniroute.automation")

# A webhook action is tried this many times (each retry is a new firing attempt).
WEBHOOK_ATTEMPTS = 5


class ActionError(Exception):
    """The action cannot be carried out; retrying would not help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RetryLater(Exception):
    """The action failed for now (a webhook); retry the firing later."""


@dataclass(slots=True)
class Deferred:
    """Writes an action leaves to its caller, who makes them together with its own (one
    insert of the notifications, one sequence reservation for the events — for a whole
    batch of timers): notifications are idempotent by id, so nothing depends on when."""

    notifications: list[Document] = field(default_factory=list)
    events: list[Document] = field(default_factory=list)

    def extend(self, other: Deferred) -> None:
        self.notifications += other.notifications
        self.events += other.events

    async def write(self, store: Store, *, maybe_written: bool) -> None:
        """Store the notifications, then append the events (theirs first)."""
        inserted = await notifications.store_many(store, self.notifications)
        announce = [notifications.created_event(d) for d in self.notifications]
        again = maybe_written or len(inserted) < len(self.notifications)
        await append(store, [*announce, *self.events], maybe_written=again)


def counter_name(counter: str) -> str:
    return f"number:{counter}"


class Executor:
    def __init__(
        self,
        store: Store,
        config: AppConfig,
        calendar: WorkingCalendar,
        clock: Clock,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.store = store
        self.config = config
        self.calendar = calendar
        self.clock = clock
        self.http = http

    async def run(
        self, actions: list[Planned], snap: Snapshot, *, first_try: bool = False
    ) -> Deferred:
        """Carry out ``actions`` in order, skipping those already finished (unless this is
        known to be the first try). Returns the writes left to the caller
        (:class:`Deferred`: the notifications and their events)."""
        out = Deferred()
        if not actions:
            return out
        done = set() if first_try else await ledger.finished(self.store, [p.key for p in actions])
        for p in actions:
            if p.key in done:
                continue
            try:
                await self.one(p, snap, out)
            except ActionError as exc:
                await self.failed(p, snap, exc.code, str(exc))
        return out

    async def one(self, p: Planned, snap: Snapshot, out: Deferred) -> None:
        a = p.action
        if a.create_task is not None:
            await self.create_task(p, a.create_task, snap)
        elif a.notify is not None:
            await self.notify(p, a.notify, snap, out)
        elif a.set_field is not None:
            await self.set_field(p, a.set_field, snap)
        elif a.move_to_stage is not None:
            await self.move_to_stage(p, a.move_to_stage, snap)
        elif a.copy_to_pipeline is not None:
            await self.copy_to_pipeline(p, a.copy_to_pipeline, snap)
        elif a.send_message is not None:
            await self.send_message(p, a.send_message, snap)
        elif a.next_number is not None:
            await self.next_number(p, a.next_number, snap)
        elif a.cascade_responsible is not None:
            await self.cascade_responsible(p, a.cascade_responsible, snap)
        elif a.close_as_junk is not None:
            await self.close_as_junk(p, a.close_as_junk, snap)
        elif a.delete_duplicate is not None:
            await self.delete_duplicate(p, a.delete_duplicate, snap)
        elif a.webhook is not None:
            await self.webhook(p, a.webhook, snap)
        elif a.document is not None:
            await document_actions.make_document(self, p, a.document, snap)
        elif a.send_sms is not None:
            await sms_actions.send_sms(self, p, a.send_sms, snap)
        elif a.send_survey is not None:
            await sms_actions.send_survey(self, p, a.send_survey, snap)
        elif a.start_process is not None:
            await self.start_process(p, a.start_process, snap)

    # --- helpers ------------------------------------------------------------------

    @staticmethod
    def by(p: Planned) -> str:
        return f"automation:{p.rule.id}"

    def values(self, p: Planned, snap: Snapshot) -> dict[str, object]:
        """What the placeholders of a text stand for."""
        responsible = self.config.user(snap.responsible_id) if snap.responsible_id else None
        out: dict[str, object] = {
            "entity.id": snap.id,
            "entity.title": snap.title,
            "entity.stage": snap.stage_id,
            "entity.pipeline": snap.pipeline_id,
            "entity.kind": snap.kind,
            "contact.id": snap.contact_id,
            "contact.name": snap.contact_name,
            "responsible.id": snap.responsible_id,
            "responsible.name": responsible.name if responsible else snap.responsible_id,
            "rule.id": p.rule.id,
            "rule.name": p.rule.name or p.rule.id,
            "timer.n": p.n,
            "timer.times": p.rule.times,
        }
        out.update({f"fields.{k}": v for k, v in snap.fields.items()})
        # ``{fields.master.name}``: the name of the user the field names (the master chosen
        # on the deal), else the field's value itself (a name typed in).
        for k, v in snap.fields.items():
            user = self.config.user(v) if isinstance(v, str) and v else None
            out[f"fields.{k}.name"] = user.name if user is not None else v
        return out

    def text(self, p: Planned, snap: Snapshot, template: str) -> str:
        return templates.render(template, self.values(p, snap))

    def entity(self, snap: Snapshot) -> Document:
        return {"kind": snap.kind, "id": snap.id}

    def deal_or_lead(self, snap: Snapshot, what: str) -> Any:
        if snap.kind not in ("lead", "deal"):
            raise ActionError(
                "not_a_lead_or_deal", f"{what} needs a lead or deal, not a {snap.kind}"
            )
        return snap.kind

    def pipeline_of(self, snap: Snapshot) -> Pipeline:
        try:
            return self.config.pipeline(str(snap.pipeline_id))
        except StopIteration:
            raise ActionError("unknown_pipeline", f"no pipeline {snap.pipeline_id!r}") from None

    async def failed(self, p: Planned, snap: Snapshot, code: str, message: str) -> None:
        log.warning(
            "automation.action_failed",
            rule=p.rule.id,
            action=p.action.kind,
            entity=snap.id,
            code=code,
            error=message,
        )
        await ledger.begin(self.store, p.key, {}, rule_id=p.rule.id, action=p.action.kind)
        await ledger.finish(self.store, p.key, ledger.FAILED, code=code, error=message[:1000])
        refs: dict[str, str | None] = {f"{snap.kind}_id": snap.id, "contact_id": snap.contact_id}
        data = {
            "rule_id": p.rule.id,
            "action": p.action.kind,
            "key": p.key,
            "code": code,
            "error": message[:1000],
        }
        ev = event("automation.failed", refs, data, key=[p.key], at=self.clock.now())
        await append(self.store, [ev], maybe_written=True)

    # --- the actions --------------------------------------------------------------

    async def create_task(self, p: Planned, spec: CreateTask, snap: Snapshot) -> None:
        now = self.clock.now()
        chosen = people.assignee(
            self.config, spec.assignee, snap.fields, snap.responsible_id, snap.watchers
        )
        found = chosen.user
        assignee = self.config.stand_in(found, now) if found else None  # away: the deputy
        watchers = [
            w
            for w in people.many(self.config, spec.watchers, snap.responsible_id, snap.watchers)
            if w != assignee
        ]
        problems = [chosen.problem] if chosen.problem else []
        deadline = self.calendar.add(now, spec.deadline) if spec.deadline else None
        if spec.deadline_at is not None:
            # Empty yet: no deadline until the field is filled (the worker follows it).
            value = snap.fields.get(spec.deadline_at.field)
            deadline = field_moment(spec.deadline_at, value, self.calendar)
            if deadline is None and value not in (None, ""):
                problems.append(
                    f"deadline_at: the field {spec.deadline_at.field} is "
                    f"{str(value)[:100]!r}, not a date; the task has no deadline"
                )
        doc: Document = {
            "_id": p.key,
            "title": self.text(p, snap, spec.title),
            "description": self.text(p, snap, spec.description) if spec.description else None,
            "template": spec.template or p.rule.id,
            "entity": self.entity(snap),
            "entity_id": snap.id,
            "contact_id": snap.contact_id,
            "assignee_id": assignee,
            "watchers": watchers,
            "checklist": [{"text": item, "done": False} for item in spec.checklist],
            "deadline": deadline,
            "rule_id": p.rule.id,
            # deadline_at: the field the deadline follows, and the action that says how.
            "deadline_from": (
                {"field": spec.deadline_at.field, "rule_id": p.rule.id, "index": p.index}
                if spec.deadline_at is not None
                else None
            ),
            "created_by": self.by(p),
            "created_at": now,
        }
        if deadline is not None and spec.remind_before is not None:
            back = Duration(-spec.remind_before.amount, spec.remind_before.unit)
            doc |= tasks.arm_reminder(self.calendar.add(deadline, back))
        await tasks.create(self.store, doc)
        if problems:
            # Made all the same (to the fallback / without a deadline); the failure says why.
            raise ActionError("bad_task_field", " ".join(problems))

    async def notify(self, p: Planned, spec: Notify, snap: Snapshot, out: Deferred) -> None:
        found = people.notified(self.config, spec.to, snap.responsible_id, snap.watchers)
        users = people.present(self.config, found.users, self.clock.now())
        if not users:
            raise ActionError(
                "no_recipient", f"nobody to notify for {spec.to!r}, not even a director or admin"
            )
        now = self.clock.now()
        text = self.text(p, snap, spec.text)
        docs = [
            {
                "_id": stable_id("notification", p.key, user),
                "user_id": user,
                "text": text,
                "entity": self.entity(snap),
                "contact_id": snap.contact_id,
                "rule_id": p.rule.id,
                # Told instead of ``to`` (who was nobody): head | director | admin.
                "fallback": found.fallback,
                "created_at": now,
                "read_at": None,
            }
            for user in users
        ]
        out.notifications.extend(docs)

    async def set_field(self, p: Planned, spec: SetField, snap: Snapshot) -> None:
        kind = self.deal_or_lead(snap, "set_field")
        if "compute" in spec.model_fields_set and spec.compute is not None:
            try:
                value: Any = expressions.compute(spec.compute, snap.fields)
            except expressions.ExpressionError as exc:
                raise ActionError("bad_value", f"{spec.field}: {exc}") from None
        elif "copy_from" in spec.model_fields_set and spec.copy_from is not None:
            value = snap.fields.get(spec.copy_from)
        elif spec.now:
            value = self.clock.now()
        else:
            value = spec.value
        memo: Document = {"old": snap.fields.get(spec.field)}
        if spec.now:
            memo["now"] = value  # a retry writes the first run's time
        record = await ledger.begin(self.store, p.key, memo, rule_id=p.rule.id)
        if spec.now:
            value = record["memo"].get("now", value)
        await self.write_fields(kind, snap, p, {spec.field: value}, {spec.field: record["memo"]})

    async def write_fields(
        self,
        kind: Any,
        snap: Snapshot,
        p: Planned,
        values: dict[str, Any],
        memos: dict[str, Document],
    ) -> None:
        before = {name: memo.get("old") for name, memo in memos.items()}
        try:
            await entities.set_fields(
                self.store,
                kind,
                snap.id,
                values,
                by=self.by(p),
                at=self.clock.now(),
                key=p.key,
                before=before,
            )
        except entities.EntityError as exc:
            raise ActionError("not_found", str(exc)) from None
        await ledger.finish(self.store, p.key)

    async def move(self, p: Planned, snap: Snapshot, target: str) -> None:
        kind = self.deal_or_lead(snap, "a stage move")
        pipeline = self.pipeline_of(snap)
        stage = pipeline.stage(target)
        if stage is None:
            raise ActionError("unknown_stage", f"pipeline {pipeline.id} has no stage {target!r}")
        record = await ledger.begin(self.store, p.key, {"from": snap.stage_id}, rule_id=p.rule.id)
        frm = record["memo"].get("from")
        current = await entities.get(self.store, kind, snap.id)
        if current is None:
            raise ActionError("not_found", f"no {kind} {snap.id}")
        if current.get("stage_id") == target:
            # Moved by an earlier run of this action that may have died before its event.
            if frm != target and int(record.get("attempts", 1)) > 1:
                ev = stages.stage_changed(
                    kind,
                    current,
                    pipeline,
                    frm,
                    stage,
                    by=self.by(p),
                    at=self.clock.now(),
                    key=[p.key],
                )
                await append(self.store, [ev], maybe_written=True)
            await ledger.finish(self.store, p.key)
            return
        try:
            await stages.move_stage(
                self.store,
                kind,
                snap.id,
                pipeline,
                target,
                self.by(p),
                at=self.clock.now(),
                key=p.key,
            )
        except stages.StageError as exc:
            if exc.code == "conflict":
                raise RetryLater(str(exc)) from None
            raise ActionError(exc.code, f"{target}: {exc}") from None
        await ledger.finish(self.store, p.key)

    async def move_to_stage(self, p: Planned, spec: MoveToStage, snap: Snapshot) -> None:
        target = spec.stage
        if target == "next":
            pipeline = self.pipeline_of(snap)
            ids = [s.id for s in pipeline.stages]
            after = ids.index(snap.stage_id) + 1 if snap.stage_id in ids else len(ids)
            nxt = next((s.id for s in pipeline.stages[after:] if not s.final), None)
            if nxt is None:
                raise ActionError("no_next_stage", f"no open stage after {snap.stage_id}")
            target = nxt
        await self.move(p, snap, target)

    async def close_as_junk(self, p: Planned, spec: CloseAsJunk, snap: Snapshot) -> None:
        stage = self.pipeline_of(snap).stage(spec.stage)
        if stage is None or stage.outcome.value != "failed":
            raise ActionError(
                "unknown_stage", f"{spec.stage!r} is not a failed stage of {snap.pipeline_id}"
            )
        await self.move(p, snap, spec.stage)

    async def delete_duplicate(self, p: Planned, spec: DeleteDuplicate, snap: Snapshot) -> None:
        kind = self.deal_or_lead(snap, "delete_duplicate")
        now = self.clock.now()
        try:
            await entities.delete_duplicate(
                self.store, kind, snap.id, by=self.by(p), at=now, key=p.key
            )
        except entities.EntityError as exc:
            raise ActionError("not_found", str(exc)) from None
        await timers.cancel_entity(self.store, snap.id, "deleted as a duplicate", now)

    async def copy_to_pipeline(self, p: Planned, spec: CopyToPipeline, snap: Snapshot) -> None:
        kind = self.deal_or_lead(snap, "copy_to_pipeline")
        source = await entities.get(self.store, kind, snap.id)
        if source is None:
            raise ActionError("not_found", f"no {kind} {snap.id}")
        pipeline = self.config.pipeline(spec.pipeline)
        stage = spec.stage or pipeline.first_stage.id
        fields = None if spec.fields == "all" else list(spec.fields)
        await entities.copy_to_pipeline(
            self.store,
            source,
            pipeline,
            stage,
            fields,
            key=p.key,
            by=self.by(p),
            at=self.clock.now(),
        )

    async def start_process(self, p: Planned, spec: StartProcess, snap: Snapshot) -> None:
        """A linked deal in ``spec.pipeline`` (its id from the action's key: a re-run finds
        it), ``parent_id`` → this deal, this deal's ``children`` ← it."""
        if snap.kind != "deal":
            raise ActionError("not_a_deal", f"start_process needs a deal, not a {snap.kind}")
        source = await entities.get(self.store, "deal", snap.id)
        if source is None:
            raise ActionError("not_found", f"no deal {snap.id}")
        if spec.of == "parent" and not source.get("parent_id"):
            raise ActionError("no_parent", f"deal {snap.id} is no linked process: no parent")
        pipeline = self.config.pipeline(spec.pipeline)
        stage = spec.stage or pipeline.first_stage.id
        fields = None if spec.fields == "all" else list(spec.fields)
        child, _ = await entities.copy_to_pipeline(
            self.store,
            source,
            pipeline,
            stage,
            fields,
            key=p.key,
            by=self.by(p),
            at=self.clock.now(),
        )
        parent_id: str = snap.id
        on_complete = spec.on_complete.model_dump() if spec.on_complete else None
        if spec.of == "parent":  # a copy of this process, for this one's parent
            parent_id = str(source["parent_id"])
            if "on_complete" not in spec.model_fields_set:
                on_complete = source.get("on_complete")
        link: Document = {"parent_id": parent_id, "on_complete": on_complete}
        if source.get("company_id"):
            link["company_id"] = source["company_id"]
        await self.store.deals.update_one({"_id": child["_id"]}, {"$set": link})
        await self.store.deals.update_one(
            {"_id": parent_id}, {"$addToSet": {"children": child["_id"]}}
        )

    async def conversation(self, spec: SendMessage, snap: Snapshot) -> Document | None:
        convs = self.store.conversations
        newest = [("last_inbound_at", DESCENDING), ("last_message_at", DESCENDING)]
        if spec.channel is not None:
            query: Document = {"contact_id": snap.contact_id, "channel": spec.channel}
            if spec.account is not None:
                query["account"] = spec.account
            found: Document | None = await convs.find_one(query, sort=newest)
            return found
        if snap.kind != "contact":
            found = await convs.find_one({"target.id": snap.id}, sort=newest)
            if found is not None:
                return found
        if snap.contact_id is None:
            return None
        found = await convs.find_one({"contact_id": snap.contact_id}, sort=newest)
        return found

    async def send_message(self, p: Planned, spec: SendMessage, snap: Snapshot) -> None:
        conv = await self.conversation(spec, snap)
        if conv is None:
            where = f" on {spec.channel}" if spec.channel else ""
            raise ActionError("no_conversation", f"no conversation with the customer{where}")
        text, template = self.text(p, snap, spec.text), None
        if spec.template is not None:
            text, template = self.template(p, snap, spec.template, conv)
        with contextlib.suppress(DuplicateKeyError):  # queued by an earlier run
            await outbox.queue(
                self.store,
                conv,
                text=text,
                author_id=self.by(p),
                message_id=p.key,
                automatic=True,
                template=template,
            )

    def template(
        self, p: Planned, snap: Snapshot, spec: TemplateSend, conv: Document
    ) -> tuple[str, Document]:
        """A WhatsApp template of the conversation's account, its params rendered like
        ``text``: the preview text and the template to send."""
        account = self.config.account(conv["channel"], conv["account"])
        if account is None or conv["channel"] != "whatsapp":
            raise ActionError(
                "template_unsupported",
                f"templates are sent on WhatsApp; the conversation is {conv['channel']}",
            )
        params = [self.text(p, snap, t) for t in spec.params]
        try:
            ref, text = wa_templates.prepare(account, spec.name, params, spec.language)
        except SendError as exc:
            raise ActionError(exc.code, exc.detail) from None
        return text, ref.model_dump()

    async def next_number(self, p: Planned, spec: NextNumber, snap: Snapshot) -> None:
        kind = self.deal_or_lead(snap, "next_number")
        record = await ledger.begin(
            self.store, p.key, {"old": snap.fields.get(spec.field)}, rule_id=p.rule.id
        )
        memo: Document = record["memo"]
        n = memo.get("n")
        if n is None:
            n = await rs.next_turn(self.store, counter_name(spec.counter))
            await ledger.remember(self.store, p.key, {"n": n})
        value = spec.format.format(n=n)
        await self.write_fields(kind, snap, p, {spec.field: value}, {spec.field: memo})

    async def cascade_responsible(
        self, p: Planned, spec: CascadeResponsible, snap: Snapshot
    ) -> None:
        kind = self.deal_or_lead(snap, "cascade_responsible")
        source = await entities.get(self.store, kind, snap.id)
        if source is None:
            raise ActionError("not_found", f"no {kind} {snap.id}")
        user = source.get("responsible_id")
        contact = (
            await self.store.contacts.find_one({"_id": snap.contact_id})
            if snap.contact_id
            else None
        )
        targets: list[tuple[str, str]] = []
        if contact is not None and "contact" in spec.to:
            targets.append(("contact", contact["_id"]))
        company = contact.get("company_id") if contact is not None else None
        if company and "company" in spec.to and await entities.get(self.store, "company", company):
            targets.append(("company", company))
        olds: dict[str, Any] = {}
        for target_kind, target_id in targets:
            doc = await entities.get(self.store, target_kind, target_id)
            olds[target_kind] = doc.get("responsible_id") if doc else None
        record = await ledger.begin(self.store, p.key, olds, rule_id=p.rule.id)
        for target_kind, target_id in targets:
            await entities.set_responsible(
                self.store,
                target_kind,  # type: ignore[arg-type]
                target_id,
                user,
                by=self.by(p),
                at=self.clock.now(),
                key=stable_id(p.key, target_kind),
                before=record["memo"].get(target_kind),
            )
        await ledger.finish(self.store, p.key)

    async def webhook(self, p: Planned, spec: CallWebhook, snap: Snapshot) -> None:
        record = await ledger.begin(self.store, p.key, {}, rule_id=p.rule.id)
        body = orjson.dumps(
            {
                "key": p.key,
                "rule_id": p.rule.id,
                "n": p.n,
                "entity": self.entity(snap),
                "pipeline_id": snap.pipeline_id,
                "stage_id": snap.stage_id,
                "responsible_id": snap.responsible_id,
                "contact_id": snap.contact_id,
                "fields": dict(snap.fields),
                "at": self.clock.now(),
            },
            default=str,
        )
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Omniroute-Idempotency-Key": p.key,
            "X-Omniroute-Timestamp": ts,
        }
        if spec.secret_env is not None:
            secret = os.environ.get(spec.secret_env)
            if secret:
                headers["X-Omniroute-Signature"] = sign(secret, ts, body)
        status: int | None = None
        error = ""
        try:
            async with self.http().post(
                spec.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
            ) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            await ledger.finish(self.store, p.key, status=status)
            return
        error = error or f"HTTP {status}"
        if int(record.get("attempts", 1)) >= WEBHOOK_ATTEMPTS:
            raise ActionError(
                "webhook_failed", f"{spec.url}: {error} ({WEBHOOK_ATTEMPTS} attempts)"
            )
        raise RetryLater(f"webhook {spec.url}: {error}")
