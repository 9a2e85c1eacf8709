"""The automation worker: follows the event log and fires due timers.

Two loops, in every process that runs it:

- **events** — one process at a time holds the ``automation`` cursor (a lease, see
  :mod:`crm_store.cursors`) and reads the log in ``seq`` order from where the cursor stands
  (:func:`crm_store.feed.read`: contiguous, gap-safe, only the event types some rule
  cares about). For each event it reads the entity, asks the rules
  (:func:`automation.evaluate.plan_event`), schedules and cancels timers, carries out the
  actions, then moves the cursor. A crash re-reads the page: every step is idempotent.
- **timers** — any process claims due timers with a lease (:mod:`crm_store.timers`) and
  fires them: the rule's condition is checked against the entity as it is now; if it no
  longer holds the timer is cancelled, not fired; else its actions run, ``timer.fired`` is
  appended and the timer is done or due again. A firing that fails midway is retried
  (after a backoff, or by another process once the lease runs out) and skips what was
  done: each action is keyed by (rule, entity, timer, firing number).

Business time comes from an injectable :class:`~automation.clock.Clock`; tests advance a
fake one and call :meth:`AutomationWorker.drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from pymongo.errors import PyMongoError

from automation import snapshot
from automation.actions import Deferred, Executor, RetryLater, counter_name
from automation.calendar import WorkingCalendar
from automation.clock import SYSTEM_CLOCK, Clock
from automation.conditions import Snapshot
from automation.durations import Duration
from automation.evaluate import (
    CLOSING_EVENTS,
    FIELD_EVENTS,
    Planned,
    RuleBook,
    TimerPlan,
    entity_of,
    facts_of,
    field_moment,
    plan_event,
    plan_timer,
)
from automation.rules import Action, MoveToStage, Rule
from config.models import AppConfig
from crm_store import cursors, entities, feed, tasks, timers, watchers
from crm_store import routing_store as rs
from crm_store import subscriptions as subs
from crm_store.documents import stable_id
from crm_store.events import event
from crm_store.store import Document, Store

log = structlog.get_logger("omniroute.automation")

CURSOR = "automation"
# Events after which a deal's responsible carries over (follow_responsible).
FOLLOW_EVENTS = ("deal.created", "deal.responsible_changed")
# An event whose handling keeps failing (not the store: a bug) is skipped after this many
# tries, so one bad event cannot stop the robots.
MAX_EVENT_TRIES = 5


def timer_doc(plan: TimerPlan, kind: str, entity_id: str, contact_id: str | None) -> Document:
    return {
        "_id": plan.id,
        "rule_id": plan.rule_id,
        "entity": {"kind": kind, "id": entity_id},
        "entity_id": entity_id,
        "contact_id": contact_id,
        "due_at": plan.due_at,
        "times": plan.times,
        "in_stage": plan.in_stage,
        "stage_id": plan.stage_id,
        "stage_since": plan.stage_since,
        "field": plan.field,
        "field_value": plan.field_value,
        "event_id": plan.event_id,
    }


class AutomationWorker:
    def __init__(
        self,
        store: Store,
        config: AppConfig,
        *,
        owner: str,
        clock: Clock = SYSTEM_CLOCK,
        poll_s: float = 1.0,
        lease_s: float = 30.0,
        timer_batch: int = 50,
        timer_concurrency: int = 8,
        event_batch: int = 100,
        retry_s: float = 30.0,
        max_attempts: int = 5,
        start_at_end: bool = True,
        gap_grace_s: float = feed.GAP_GRACE_S,
    ) -> None:
        self.store = store
        self.config = config
        self.owner = owner
        self.clock = clock
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.timer_batch = timer_batch
        self.timer_concurrency = timer_concurrency
        self.event_batch = event_batch
        self.retry_s = retry_s
        self.max_attempts = max_attempts
        self.start_at_end = start_at_end
        self.gap_grace_s = gap_grace_s
        self.book = RuleBook(config.automation)
        self.calendar = WorkingCalendar.from_config(config.calendar)
        self.executor = Executor(store, config, self.calendar, clock, self._session)
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tries: dict[str, int] = {}

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers={"User-Agent": "omniroute-automation/1"})
        return self._http

    # --- lifecycle ----------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the cursor (at the current end of the log, unless ``start_at_end`` is
        false) and the counters the rules number from."""
        start = await subs.current_seq(self.store) if self.start_at_end else 0
        await cursors.ensure(self.store, CURSOR, start)
        for rule in self.book.rules:
            for action in rule.do:
                if action.next_number is not None:
                    await rs.ensure_counter(self.store, counter_name(action.next_number.counter))

    async def start(self) -> None:
        await self.prepare()
        self._tasks = [
            asyncio.create_task(self._loop(self.run_events), name="automation-events"),
            asyncio.create_task(self._loop(self.run_timers), name="automation-timers"),
            asyncio.create_task(self._loop(self.run_reminders), name="automation-reminders"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(PyMongoError):
            await cursors.release(self.store, CURSOR, self.owner)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _loop(self, step: Any) -> None:
        while True:
            try:
                worked = await step()
            except PyMongoError as exc:
                log.warning("automation.store_unavailable", error=type(exc).__name__)
                worked = 0
            except Exception as exc:  # keep the loop alive; the cause is logged
                log.exception("automation.loop_failed", error=repr(exc))
                worked = 0
            if not worked:
                await asyncio.sleep(self.poll_s)

    async def drain(self, rounds: int = 100) -> int:
        """Handle every event and fire every due timer, until nothing is left (tests and
        benchmarks). Returns how many events and timers were handled."""
        total = 0
        for _ in range(rounds):
            n = await self.run_events() + await self.run_timers() + await self.run_reminders()
            total += n
            if n == 0:
                return total
        raise RuntimeError(f"automation did not settle in {rounds} rounds")

    # --- events -------------------------------------------------------------------

    async def run_events(self) -> int:
        """Handle the events after the cursor (if this process holds it); returns how many
        events were read."""
        held = await cursors.hold(self.store, CURSOR, self.owner, self.lease_s)
        if held is None:
            return 0
        position = int(held["seq"])
        page = await feed.read(
            self.store,
            position,
            limit=self.event_batch,
            types=sorted({*self.book.event_types, *FOLLOW_EVENTS}),
            gap_grace_s=self.gap_grace_s,
        )
        if page.next_after == position:
            return 0
        renewed = time.monotonic()
        for ev in page.events:
            if time.monotonic() - renewed > self.lease_s / 3:
                # A long page: keep the cursor ours (another process would redo the page).
                if await cursors.hold(self.store, CURSOR, self.owner, self.lease_s) is None:
                    return 0
                renewed = time.monotonic()
            try:
                await self.handle_event(ev)
            except (PyMongoError, RetryLater) as exc:
                # Try again from this event on the next round.
                log.warning("automation.event_retry", event_id=ev["_id"], error=repr(exc))
                await cursors.advance(self.store, CURSOR, self.owner, int(ev["seq"]) - 1)
                return 0
            except Exception as exc:
                tries = self._tries[ev["_id"]] = self._tries.get(ev["_id"], 0) + 1
                log.exception("automation.event_failed", event_id=ev["_id"], tries=tries)
                if tries < MAX_EVENT_TRIES:
                    await cursors.advance(self.store, CURSOR, self.owner, int(ev["seq"]) - 1)
                    return 0
                log.error("automation.event_skipped", event_id=ev["_id"], error=repr(exc))
            self._tries.pop(ev["_id"], None)
        await cursors.advance(self.store, CURSOR, self.owner, page.next_after)
        return max(1, len(page.events))

    async def handle_event(self, ev: Mapping[str, Any]) -> None:
        if ev["type"] in CLOSING_EVENTS:
            await self.close_tasks(ev)
        if ev["type"] in FOLLOW_EVENTS:
            await self.follow_responsible(ev)
        if ev["type"] == "deal.stage_changed":
            await self.complete_process(ev)
        if ev["type"] in FIELD_EVENTS and self.book.deadline_fields:
            await self.follow_deadlines(ev)
        facts = facts_of(ev)
        ref = entity_of(ev)
        if not facts or ref is None:
            return
        kind, entity_id = ref
        snap = await snapshot.load(self.store, self.book, kind, entity_id)
        if snap is None:
            return
        now = self.clock.now()
        plan = plan_event(self.book, facts, snap, self.calendar, now)
        if plan.empty:
            return
        if plan.stage_changed:
            await timers.cancel_left_stage(
                self.store, snap.id, snap.stage_id, snap.stage_entered_at, now
            )
        for rule_id, keep in plan.replaced:
            await timers.cancel_others(
                self.store, rule_id, snap.id, keep or "", "the date changed", now
            )
        for rule_id, why in plan.stopped:  # the rule's ``until`` event
            await timers.cancel_others(self.store, rule_id, snap.id, "", why, now)
        for t in plan.timers:
            await timers.schedule(self.store, timer_doc(t, snap.kind, snap.id, snap.contact_id))
        # An event may be handled again after a crash: what was done is looked up.
        deferred = await self.executor.run(plan.actions, snap)
        await deferred.write(self.store, maybe_written=True)

    async def close_tasks(self, ev: Mapping[str, Any]) -> None:
        """A lead/deal that closed (a final stage: won or failed), was converted or deleted
        keeps no open tasks: they are cancelled with the reason (crm_store/tasks.py)."""
        etype: str = ev["type"]
        kind = etype.split(".", 1)[0]
        entity_id = (ev.get("refs") or {}).get(f"{kind}_id")
        if not isinstance(entity_id, str):
            return
        if etype == "lead.converted":
            reason = "the lead was converted into a deal"
        elif etype.endswith(".deleted"):
            reason = f"the {kind} was deleted"
        else:
            doc = await self.store[f"{kind}s"].find_one(
                {"_id": entity_id}, {"open": 1, "outcome": 1, "stage_id": 1}
            )
            to = (ev.get("data") or {}).get("to")
            if doc is None or doc.get("open", True) or doc.get("stage_id") != to:
                return
            reason = f"the {kind} was closed ({doc.get('outcome') or to})"
        cancelled = await tasks.cancel_for_entity(
            self.store, entity_id, reason, at=ev.get("occurred_at")
        )
        if cancelled:
            log.info("automation.tasks_cancelled", entity=entity_id, count=len(cancelled))

    # --- timers -------------------------------------------------------------------

    async def follow_responsible(self, ev: Mapping[str, Any]) -> None:
        """A deal's responsible (new or changed) carries over: to its contact and company
        when its pipeline says ``cascade_responsible``; and the agent of the responsible's
        department (users.yaml ``agent``) becomes the deal's ``agent_id`` and a watcher.
        Every write is keyed by the event: a replay changes nothing."""
        deal_id = (ev.get("refs") or {}).get("deal_id")
        deal = await self.store.deals.find_one({"_id": deal_id}) if deal_id else None
        if deal is None or deal.get("deleted") or not deal.get("responsible_id"):
            return
        responsible: str = deal["responsible_id"]
        at = ev.get("occurred_at") or self.clock.now()
        by = f"automation:{ev['type']}"
        pipeline = next(
            (p for p in self.config.pipelines.pipelines if p.id == deal.get("pipeline_id")), None
        )
        if pipeline is not None and pipeline.cascade_responsible:
            contact = await self.store.contacts.find_one(
                {"_id": deal.get("contact_id")}, {"company_id": 1}
            )
            company = deal.get("company_id") or (contact or {}).get("company_id")
            targets: list[tuple[entities.Kind, Any]] = [
                ("contact", deal.get("contact_id")),
                ("company", company),
            ]
            for kind, target in targets:
                if isinstance(target, str) and await entities.get(self.store, kind, target):
                    await entities.set_responsible(
                        self.store,
                        kind,
                        target,
                        responsible,
                        by=by,
                        at=at,
                        key=f"{ev['_id']}:cascade:{kind}",
                    )
        user = self.config.user(responsible)
        dept = next(
            (d for d in self.config.users.departments if user and d.id == user.department), None
        )
        if dept is not None and dept.agent and deal.get("agent_id") != dept.agent:
            await self.store.deals.update_one(
                {"_id": deal["_id"]}, {"$set": {"agent_id": dept.agent}}
            )
            await watchers.change(self.store, "deal", deal["_id"], dept.agent, add=True, by=by)

    async def complete_process(self, ev: Mapping[str, Any]) -> None:
        """A linked process (automation start_process) that entered a won stage moves its
        parent deal as its ``on_complete`` says — through the executor, keyed by the event,
        so a replay moves nothing twice; a refused move is an ``automation.failed``."""
        deal_id = (ev.get("refs") or {}).get("deal_id")
        child = await self.store.deals.find_one({"_id": deal_id}) if deal_id else None
        if child is None or not child.get("parent_id") or not child.get("on_complete"):
            return
        pipeline = next(
            (p for p in self.config.pipelines.pipelines if p.id == child.get("pipeline_id")), None
        )
        stage = pipeline.stage((ev.get("data") or {}).get("to") or "") if pipeline else None
        if stage is None or stage.outcome.value != "won" or child.get("stage_id") != stage.id:
            return
        parent = await snapshot.load(self.store, self.book, "deal", child["parent_id"])
        if parent is None or not parent.open:
            return
        # Parallel processes (start_process twice): the parent moves when all are won.
        siblings = [
            d
            async for d in self.store.deals.find(
                {"parent_id": child["parent_id"], "on_complete": {"$ne": None}},
                {"pipeline_id": 1, "stage_id": 1, "deleted": 1},
            )
            if not d.get("deleted")
        ]
        if any(not self.won(d) for d in siblings):
            log.info("automation.process_waits", parent=child["parent_id"], child=child["_id"])
            return
        target = str(child["on_complete"].get("move_to_stage") or "next")
        rule = Rule(
            id="process_completed",
            on=("stage.entered",),
            do=[Action(move_to_stage=MoveToStage(stage=target))],
        )
        key = stable_id("process", child["_id"], str(ev["_id"]))
        if len(siblings) > 1:  # once for the group, whichever event is replayed
            key = stable_id("process", child["parent_id"], *sorted(d["_id"] for d in siblings))
        deferred = await self.executor.run([Planned(rule, 0, rule.do[0], key)], parent)
        await deferred.write(self.store, maybe_written=True)

    async def follow_deadlines(self, ev: Mapping[str, Any]) -> None:
        """A date field changed: the open tasks whose ``deadline_at`` names it get the
        deadline (and reminder) it gives now — computed from the entity as it is, so a
        replay writes the same; a field cleared or unreadable leaves no deadline."""
        changed = set((ev.get("data") or {}).get("fields") or {}) & self.book.deadline_fields
        kind = str(ev["type"]).split(".", 1)[0]
        entity_id = (ev.get("refs") or {}).get(f"{kind}_id")
        if not changed or not isinstance(entity_id, str):
            return
        doc = await entities.get(self.store, kind, entity_id)
        values: Mapping[str, Any] = (doc or {}).get("fields") or {}
        query = {
            "entity_id": entity_id,
            "status": tasks.OPEN,
            "deadline_from.field": {"$in": sorted(changed)},
        }
        async for t in tasks.tasks(self.store).find(query):
            source = t["deadline_from"]
            rule = self.book.by_id.get(str(source.get("rule_id")))
            index = int(source.get("index", -1))
            spec = rule.do[index].create_task if rule and 0 <= index < len(rule.do) else None
            if spec is None or spec.deadline_at is None:
                continue  # the rule is gone or changed: the deadline stays
            deadline = field_moment(
                spec.deadline_at, values.get(spec.deadline_at.field), self.calendar
            )
            update: Document = {"$set": {"deadline": deadline}}
            if spec.remind_before is not None and deadline is not None:
                back = Duration(-spec.remind_before.amount, spec.remind_before.unit)
                remind_at = self.calendar.add(deadline, back)
                if remind_at != t.get("remind_at"):
                    update["$set"] |= tasks.arm_reminder(remind_at)
            elif deadline is None:  # no deadline, nothing to remind of
                update["$unset"] = {"remind_at": "", tasks.REMIND_DUE: ""}
            await tasks.tasks(self.store).update_one(
                {"_id": t["_id"], "status": tasks.OPEN}, update
            )
            log.info("automation.deadline_followed", task=t["_id"], deadline=str(deadline))

    def won(self, deal: Mapping[str, Any]) -> bool:
        """The deal stands in a won stage of its pipeline."""
        pipeline = next(
            (p for p in self.config.pipelines.pipelines if p.id == deal.get("pipeline_id")), None
        )
        stage = pipeline.stage(str(deal.get("stage_id") or "")) if pipeline else None
        return stage is not None and stage.outcome.value == "won"

    async def run_reminders(self) -> int:
        """Tell each assignee of an open task whose ``remind_at`` has come (the rule's
        ``remind_before`` its deadline) — once: the claim is a conditional update."""
        now = self.clock.now()
        out = Deferred()
        for t in await tasks.due_reminders(self.store, now):
            user = t.get("assignee_id")
            # A task with nobody to tell is claimed all the same: its reminder has come
            # (left due, it would come back on every pass and take a place in the batch).
            if not await tasks.claim_reminder(self.store, t["_id"], now) or not user:
                continue
            deadline = t.get("deadline")
            when = self.calendar.local(deadline).strftime("%d.%m %H:%M") if deadline else ""
            out.notifications.append(
                {
                    "_id": stable_id("notification", "reminder", t["_id"]),
                    "user_id": user,
                    "text": f"Reminder: «{t['title']}» is due {when}".strip(),
                    "entity": t.get("entity"),
                    "contact_id": t.get("contact_id"),
                    "task_id": t["_id"],
                    "rule_id": t.get("rule_id"),
                    "fallback": None,
                    "created_at": now,
                    "read_at": None,
                }
            )
        if out.notifications:
            await out.write(self.store, maybe_written=True)
        return len(out.notifications)

    async def run_timers(self) -> int:
        """Claim the timers due by the clock and fire them; returns how many.

        The timers of a claimed batch are fired concurrently; what their firings leave to
        write — notifications, events, the timers' new state — is written once for the
        batch (group commit: three writes instead of three per timer)."""
        claimed = await timers.claim_due(
            self.store, self.owner, self.clock.now(), self.lease_s, self.timer_batch
        )
        if not claimed:
            return 0
        now = self.clock.now()
        gate = asyncio.Semaphore(self.timer_concurrency)
        try:
            snaps = await snapshot.load_many(self.store, self.book, [ref(t) for t in claimed])
        except PyMongoError as exc:
            log.warning("automation.store_unavailable", error=type(exc).__name__)
            return 0  # left claimed: retried when the lease runs out

        async def one(t: Document) -> Firing | None:
            async with gate:
                return await self.fire(t, now, snaps.get(ref(t)))

        firings = [f for f in await asyncio.gather(*(one(t) for t in claimed)) if f]
        if firings:
            batch = Deferred()
            for f in firings:
                batch.extend(f.deferred)
            try:
                await batch.write(self.store, maybe_written=not all(f.first for f in firings))
                await timers.fired_many(
                    self.store, [(f.timer, f.next_due) for f in firings], self.owner, at=now
                )
            except PyMongoError as exc:
                # Left claimed: taken over when the lease runs out; nothing is done twice.
                log.warning("automation.batch_unfinished", error=type(exc).__name__)
        return len(claimed)

    async def fire(self, timer: Document, now: datetime, snap: Snapshot | None) -> Firing | None:
        """Decide and act for one claimed timer (``snap``: its entity, None if gone).
        Returns what is left to write for it, or None (cancelled, or failed and left for a
        retry)."""
        try:
            decision = plan_timer(self.book, timer, snap, self.calendar, now)
            if not decision.fire or snap is None:
                await timers.cancel(self.store, timer, self.owner, decision.reason, now)
                log.info("automation.timer_cancelled", timer=timer["_id"], reason=decision.reason)
                return None
            # A timer claimed fresh (not taken over from a dead worker, not a retry)
            # has done nothing of this firing yet: no need to look up what was done.
            first = bool(timer.get("fresh")) and not timer.get("attempts")
            deferred = await self.executor.run(decision.actions, snap, first_try=first)
            refs: dict[str, str | None] = {
                f"{snap.kind}_id": snap.id,
                "contact_id": snap.contact_id,
                "timer_id": timer["_id"],
            }
            data = {
                "rule_id": timer["rule_id"],
                "timer_id": timer["_id"],
                "n": decision.n,
                "due_at": timer["due_at"],
            }
            fired = event("timer.fired", refs, data, key=[timer["_id"], str(decision.n)], at=now)
            deferred.events.append(fired)
            return Firing(timer, deferred, decision.next_due, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("automation.timer_retry", timer=timer["_id"], error=repr(exc))
            with contextlib.suppress(PyMongoError):
                await timers.retry_later(
                    self.store,
                    timer,
                    self.owner,
                    repr(exc),
                    retry_in_s=self.retry_s,
                    max_attempts=self.max_attempts,
                    at=now,
                )
            return None


def ref(timer: Document) -> tuple[str, str]:
    entity = timer.get("entity") or {}
    return str(entity.get("kind")), str(entity.get("id"))


@dataclass(slots=True)
class Firing:
    """A timer that fired, with what is left to write for it."""

    timer: Document
    deferred: Deferred
    next_due: datetime | None
    first: bool
