"""Playing a scenario: a throw-away embedded store, routing as the service runs it, the
robots on a virtual clock; after each step the events it caused become timeline lines and
the step's expectations are checked.

Nothing leaves the machine: customers' messages enter through the durable intake write
every webhook uses (no provider is involved), the outbox and consumer webhooks are not
started (what the customer would be sent stays queued and is listed), mailboxes are not
read. Business time is the virtual clock's; operators act at the clock's time.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import ValidationError

from automation.calendar import WorkingCalendar
from automation.clock import FakeClock
from automation.scenario import expect, inbound, paper_steps, timeline, world
from automation.scenario.model import NewCompany, Ref, Scenario, Step, Wait
from automation.worker import AutomationWorker
from config.models import AppConfig
from crm_store import companies, contact_fields, conversion, entities, outbox, tasks, watchers
from crm_store import routing_store as rs
from crm_store.embedded import EmbeddedStore
from crm_store.stages import StageError, move_stage
from crm_store.store import Store
from inbox import access
from inbox.auth import Principal, visible_departments
from ingest.accept import IntakeWriter, store_parsed
from ingest.call_announcer import CallAnnouncer
from ingest.metrics import Metrics
from ingest.service import ensure_indexes_with_retry
from ingest.worker import RoutingWorker
from routing.router import Router

Document = dict[str, Any]
Print = Callable[[str], None]
ROUTED_TIMEOUT_S = 60.0


class ScenarioError(ValueError):
    """A scenario file that cannot be played (unreadable, or a step the config lacks)."""


def load(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: not a scenario:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ScenarioError("\n".join(lines)) from None


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    outcomes: dict[int, list[expect.Outcome]] = field(default_factory=dict)
    failed_steps: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return expect.summary(self.outcomes)[0]

    @property
    def failed(self) -> int:
        return expect.summary(self.outcomes)[1] + len(self.failed_steps)

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Player:
    """One scenario against one running store."""

    def __init__(
        self, sc: Scenario, config: AppConfig, store: Store, out: Print, owner: str
    ) -> None:
        self.sc = sc
        self.config = config
        self.store = store
        self.out = out
        self.calendar = WorkingCalendar.from_config(config.calendar)
        self.tz: ZoneInfo = self.calendar.tz
        start = sc.start if sc.start.tzinfo else sc.start.replace(tzinfo=self.tz)
        self.clock = FakeClock(start)
        self.owner = owner
        self.result = Result()
        self.names = timeline.Names({u.id: u.name for u in config.users.users})
        self.keys: dict[str, list[str]] = {
            p: world.identity_keys(person, []) for p, person in sc.people.items()
        }
        self.messengers: dict[str, list[tuple[str, str, str]]] = {p: [] for p in sc.people}
        self.seq = 0
        self.last_event = 0
        self.seen_out: set[str] = set()
        self.router = Router(store, config)
        self.routing = RoutingWorker(
            store, self.router, Metrics(), owner=owner, lease_s=30.0, recovery_interval_s=0.5
        )
        self.writer = IntakeWriter(store, owner, 30.0, None, config.service_pipelines())
        self.calls = CallAnnouncer(store, config.service_pipelines())
        self.robots = AutomationWorker(
            store, config, owner=owner, clock=self.clock, start_at_end=False
        )

    # --- the run --------------------------------------------------------------------

    async def play(self) -> Result:
        await ensure_indexes_with_retry(self.store)
        for line in sorted({s.line for s in self.config.sources.sources if s.line}):
            await rs.ensure_counter(self.store, f"round_robin:{line}")
        await self.robots.prepare()
        await self.routing.start()
        try:
            self.say(f"scenario: {self.sc.name}")
            for i, step in enumerate(self.sc.steps):
                await self.step(i, step)
        finally:
            await self.robots.stop()
            await self.routing.stop()
        return self.result

    def say(self, text: str, *, at: datetime | None = None) -> None:
        when = timeline.stamp(at or self.clock.now(), self.tz)
        line = f"{when}  {text}"
        self.result.lines.append(line)
        self.out(line)

    async def step(self, i: int, step: Step) -> None:
        if step.say:
            self.say(f"— {step.say}")
        try:
            await self.act(step)
        except (inbound.StepError, StageError, LookupError) as exc:
            self.result.failed_steps.append(f"steps[{i}]: {exc}")
            self.say(f"STEP FAILED steps[{i}] ({step.action}): {exc}")
        await self.settle()
        await self.report_events()
        if step.expect:
            await self.check(i, step)

    async def act(self, step: Step) -> None:
        now = self.clock.now()
        if step.write is not None:
            w = step.write
            account = inbound.pick_account(self.config.channels.accounts, w.channel, w.account)
            person = self.sc.people[w.who]
            parsed = inbound.message(w.who, person, w, account, self.next_seq(), now)
            self.remember(w.who, parsed)
            self.say(f"{w.who} writes on {account.channel}/{account.account}: «{w.text}»")
            await store_parsed(self.writer, account.source, parsed, b"", self.routing.submit)
        elif step.call is not None:
            c = step.call
            account = self.telephony(c.account)
            person = self.sc.people[c.who]
            parsed = inbound.call(c.who, person, c, account, self.next_seq(), now)
            how = f"answered by {c.answered_by}" if c.answered_by else "nobody answers"
            self.say(f"{c.who} calls ({account.channel}/{account.account}), {how}")
            await store_parsed(self.writer, account.source, parsed, b"", self.routing.submit)
        elif step.move is not None:
            await self.move(step)
        elif step.set is not None:
            s = step.set
            doc = await self.find(s.entity)
            self.say(f"{self.by(s.by)} sets on {s.entity}: {s.fields}")
            await entities.set_fields(
                self.store, s.entity.kind, doc["_id"], s.fields, by=self.by(s.by), at=now
            )
        elif step.assign is not None:
            a = step.assign
            doc = await self.find(a.entity)
            self.say(f"{self.by(a.by)} makes {a.to} responsible for {a.entity}")
            await entities.set_responsible(
                self.store, a.entity.kind, doc["_id"], a.to, by=self.by(a.by), at=now
            )
        elif step.watch is not None:
            wt = step.watch
            doc = await self.find(wt.entity)
            self.say(f"{self.by(wt.by)} adds {wt.user} to the watchers of {wt.entity}")
            await watchers.change(
                self.store, wt.entity.kind, doc["_id"], wt.user, add=True, by=self.by(wt.by), at=now
            )
        elif step.company is not None:
            await self.company(step)
        elif step.contact_fields is not None:
            cf = step.contact_fields
            contact = (await world.read(self.store, self.keys)).contact_of(cf.of)
            if contact is None:
                raise LookupError(f"{cf.of} has no contact")
            self.say(f"{self.by(cf.by)} sets on {cf.of}'s contact: {cf.fields}")
            await contact_fields.set_fields(self.store, contact, cf.fields, at=now)
        elif step.complete is not None:
            await self.complete(step)
        elif step.convert is not None:
            await self.convert(step)
        elif step.reply is not None:
            await self.reply(step)
        elif step.document is not None:
            await paper_steps.document(self, step.document)
        elif step.answer_survey is not None:
            await paper_steps.answer_survey(self, step.answer_survey)
        elif step.wait is not None:
            await self.wait_until(self.target(step.wait, now))

    # --- actions --------------------------------------------------------------------

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def by(self, user: str | None) -> str:
        if user is not None:
            return user
        if self.sc.operator is not None:
            return self.sc.operator
        admins = [u.id for u in self.config.users.users if u.role == "admin"]
        return admins[0] if admins else "scenario"

    def telephony(self, account: str | None) -> Any:
        for channel in ("megafon", "mango", "zadarma", "pbx"):
            try:
                return inbound.pick_account(self.config.channels.accounts, channel, account)
            except inbound.StepError:
                continue
        raise inbound.StepError("no enabled telephony account in the configuration")

    def remember(self, who: str, parsed: Any) -> None:
        for m in parsed.messages:
            if m.sender.external_user_id:
                self.messengers[who].append((m.channel, m.account, m.sender.external_user_id))
        person = self.sc.people[who]
        self.keys[who] = world.identity_keys(person, self.messengers[who])

    async def find(self, ref: Ref) -> Document:
        w = await world.read(self.store, self.keys)
        docs = w.of(ref.person, ref.kind, ref.pipeline)
        if ref.stage is not None:
            docs = [d for d in docs if d.get("stage_id") == ref.stage]
        if not docs:
            raise LookupError(f"{ref} does not exist")
        return docs[-1]

    async def move(self, step: Step) -> None:
        m = step.move
        assert m is not None
        doc = await self.find(m.entity)
        pipeline = self.config.pipeline(doc["pipeline_id"])
        who = self.by(m.by)
        self.say(f"{who} moves {m.entity} to {m.to}")
        try:
            await move_stage(
                self.store, m.entity.kind, doc["_id"], pipeline, m.to, who, at=self.clock.now()
            )
        except StageError as exc:
            self.say(f"refused: {exc}")
            if m.refused is None:
                raise
            ok = m.refused.lower() in str(exc).lower()
            self.record(
                expect.Outcome(ok, f"the move is refused with «{m.refused}»", str(exc), None)
            )
            return
        if m.refused is not None:
            self.record(
                expect.Outcome(False, f"the move is refused with «{m.refused}»", "moved", None)
            )

    async def complete(self, step: Step) -> None:
        c = step.complete
        assert c is not None
        query: Document = {"status": tasks.OPEN}
        if c.entity is not None:
            doc = await self.find(c.entity)
            query["entity_id"] = doc["_id"]
        found = [
            t
            async for t in self.store["tasks"].find(query, sort=[("created_at", 1)])
            if c.task.lower() in str(t.get("title", "")).lower()
        ]
        if not found:
            raise LookupError(f"no open task «{c.task}»")
        who = self.by(c.by)
        task = found[0]
        entity = task.get("entity") or {}
        if c.fields and entity.get("kind") in ("lead", "deal"):
            self.say(f"{who} answers the task «{task['title']}»: {c.fields}")
            await entities.set_fields(
                self.store, entity["kind"], entity["id"], c.fields, by=who, at=self.clock.now()
            )
        self.say(f"{who} completes the task «{task['title']}»")
        await tasks.complete(self.store, task["_id"], by=who, at=self.clock.now())

    async def new_company(self, given: NewCompany, responsible: object, who: str) -> Document:
        """The company created (or the one already holding the INN)."""
        data = given.model_dump(exclude_none=True, exclude={"of", "by"})
        try:
            parsed = companies.CompanyData.model_validate({**data, "responsible_id": responsible})
        except ValidationError as exc:
            raise inbound.StepError(f"not a company: {exc.errors()[0]['msg']}") from None
        company, _ = await companies.create(self.store, parsed, by=who, at=self.clock.now())
        return company

    async def company(self, step: Step) -> None:
        c = step.company
        assert c is not None
        ids = (await world.read(self.store, self.keys)).contacts.get(c.of, [])
        if not ids:
            raise LookupError(f"{c.of} has no contact")
        who = self.by(c.by)
        contact = await self.store.contacts.find_one({"_id": ids[-1]})
        company = await self.new_company(c, (contact or {}).get("responsible_id"), who)
        self.say(f"{who} makes {c.of} a contact of the company «{company['name']}»")
        await companies.link_contact(
            self.store, company["_id"], ids[-1], by=who, at=self.clock.now()
        )

    async def convert(self, step: Step) -> None:
        c = step.convert
        assert c is not None
        lead = await self.find(Ref(lead=c.lead))
        pipeline = self.config.pipeline(c.pipeline)
        stage = c.stage or pipeline.stages[0].id
        who = self.by(c.by)
        company_id = None
        if c.company is not None:
            company = await self.new_company(c.company, lead.get("responsible_id"), who)
            company_id = company["_id"]
        with_company = f" with the company «{c.company.name}»" if c.company else ""
        self.say(
            f"{who} converts {c.lead}'s lead into a deal in {c.pipeline}/{stage}{with_company}"
        )
        await conversion.convert(
            self.store,
            lead,
            pipeline,
            stage,
            None,
            who,
            lead_pipeline=self.config.pipeline(lead["pipeline_id"]),
            at=self.clock.now(),
            company_id=company_id,
        )

    async def reply(self, step: Step) -> None:
        r = step.reply
        assert r is not None
        ids = (await world.read(self.store, self.keys)).contacts.get(r.to, [])
        conv = await self.store.conversations.find_one(
            {"contact_id": {"$in": ids}}, sort=[("last_message_at", -1)]
        )
        if conv is None:
            raise LookupError(f"no conversation with {r.to}")
        who = self.by(r.by)
        self.say(f"{who} answers {r.to} on {conv['channel']}: «{r.text}»")
        await outbox.queue(
            self.store, conv, text=r.text, author_id=who, message_id=f"scenario-{self.next_seq()}"
        )

    def target(self, wait: Wait, now: datetime) -> datetime:
        if wait.until is not None:
            return wait.until if wait.until.tzinfo else wait.until.replace(tzinfo=self.tz)
        assert wait.duration is not None
        return self.calendar.add(now, wait.duration)

    # --- time -----------------------------------------------------------------------

    async def wait_until(self, target: datetime) -> None:
        """Move the clock to ``target`` through every timer that comes due on the way, each
        fired at its own due time (so the timeline reads as the days would)."""
        if target <= self.clock.now():
            return
        self.say(f"… time passes until {timeline.stamp(target, self.tz)}")
        for _ in range(10_000):
            nxt = await self.store["timers"].find_one(
                {"state": "pending", "due_at": {"$lte": target}}, sort=[("due_at", 1)]
            )
            if nxt is None:
                break
            due = nxt["due_at"]
            due = due if due.tzinfo else due.replace(tzinfo=ZoneInfo("UTC"))
            if due > self.clock.now():
                self.clock.set(due)
            await self.robots.drain()
            await self.settle()
            await self.report_events()
        self.clock.set(target)
        await self.robots.drain()

    async def settle(self) -> None:
        """Routing has taken every message in, and the robots have handled everything."""
        for _ in range(5):
            await self.routed()
            # The calls' events (call.missed …), announced as the service's announcer does.
            await self.calls.sweep()
            n = await self.robots.drain()
            pending = await self.store.intake.count_documents({"status": "pending"})
            if n == 0 and pending == 0:
                return

    async def routed(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUTED_TIMEOUT_S
        while await self.store.intake.count_documents({"status": "pending"}):
            if loop.time() > deadline:
                raise TimeoutError("routing did not finish")
            await asyncio.sleep(0.02)

    # --- reporting ------------------------------------------------------------------

    async def report_events(self) -> None:
        w = await world.read(self.store, self.keys)
        for person, ids in w.contacts.items():
            for cid in ids:
                self.names.contacts[cid] = person
        cursor = self.store.events.find({"seq": {"$gt": self.last_event}}, sort=[("seq", 1)])
        async for e in cursor:
            self.last_event = max(self.last_event, int(e.get("seq") or 0))
            text = timeline.line(e, self.names, self.tz)
            if text is not None:
                self.say(f"  {text}", at=self.clock.now())
        for m in w.outbound:
            if m["_id"] in self.seen_out:
                continue
            self.seen_out.add(m["_id"])
            to = self.names.contacts.get(str(m.get("contact_id")), "a customer")
            self.say(f"  → {to} via {m.get('channel')}: «{m.get('text')}»")

    def record(self, outcome: expect.Outcome) -> None:
        self.result.outcomes.setdefault(len(self.result.outcomes), []).append(outcome)
        self._print(outcome)

    def _print(self, o: expect.Outcome) -> None:
        mark = "PASS" if o.ok else "FAIL"
        self.say(f"  [{mark}] {o.what}" + ("" if o.ok else f" — found: {o.found}"))
        if o.quote:
            self.out(f"{'':22}  «{o.quote}»")

    def sees(self, user_id: str, doc: Document) -> bool:
        user = self.config.user(user_id)
        if user is None:
            return False
        principal = Principal(user, visible_departments(self.config, user))
        return access.sees_entity(self.config, principal, doc)

    async def check(self, i: int, step: Step) -> None:
        w = await world.read(self.store, self.keys)
        w.sees = self.sees
        results = [expect.check(e, w, self.tz) for e in step.expect]
        self.result.outcomes[1000 + i] = results
        for o in results:
            self._print(o)


def config_dir_for(scenario_path: Path, given: Path | None) -> Path:
    """``--config`` if given; else the scenario's own directory when it holds a
    configuration (config/examples/<company>/scenario.yaml); else the default config."""
    if given is not None:
        return given
    here = scenario_path.resolve().parent
    if (here / "pipelines.yaml").is_file():
        return here
    from config.settings import DEFAULT_CONFIG_DIR

    return DEFAULT_CONFIG_DIR


async def run(path: Path, config: AppConfig, out: Print = print) -> Result:
    """Play the scenario at ``path`` against a fresh in-memory embedded store."""
    sc = load(path)
    embedded = EmbeddedStore(storage_path=None)
    await embedded.start()
    store = Store.open(embedded.uri, "scenario")
    owner = f"scenario:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    try:
        player = Player(sc, config, store, out, owner)
        result = await player.play()
    finally:
        await store.close()
        await embedded.stop()
    passed, failed = expect.summary(result.outcomes)
    out(
        f"\n{sc.name}: {passed} expectation(s) passed, {failed} failed"
        + (f", {len(result.failed_steps)} step(s) failed" if result.failed_steps else "")
    )
    for s in result.failed_steps:
        out(f"  {s}")
    return result
