"""The engine against the running service and the test MongoDB: timers fire exactly once
across workers and processes, are cancelled when their condition no longer holds, are
retried after a failure or a crash midway without doing anything twice; the event log is
followed from a persisted cursor; the worker runs inside the service."""

from __future__ import annotations

import asyncio
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from automation.clock import FakeClock
from automation.evaluate import plan_timer
from automation.worker import CURSOR, AutomationWorker
from config.loader import load_config
from config.models import AppConfig
from crm_store import automation_log, entities, timers
from crm_store.store import Store
from tests.automation_support import copy_seed, msk, robots
from tests.helpers import free_port, wait_for
from tests.service import api_body, in_process, proc


def config_with_rules(tmp_path: Path, rules: str) -> tuple[AppConfig, Path]:
    target = copy_seed("furniture", tmp_path / "config")
    (target / "automation.yaml").write_text(textwrap.dedent(rules), encoding="utf-8")
    return load_config(target), target


@dataclass
class Hook:
    """A local webhook receiver: answers ``fail_first`` requests per key with 500."""

    fail_first: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def per_key(self) -> Counter[str]:
        return Counter(c["key"] for c in self.calls)


@asynccontextmanager
async def hook_server(fail_first: int = 0) -> AsyncIterator[Hook]:
    hook = Hook(fail_first)

    async def receive(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        assert request.headers["X-Omniroute-Idempotency-Key"] == body["key"]
        hook.calls.append(body)
        if hook.per_key()[body["key"]] <= hook.fail_first:
            return web.Response(status=500)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


PING_RULES = """\
rules:
  - id: ping
    on: deal.created
    after: 1h
    do:
      - create_task: {{title: "Ping {{entity.id}}", template: ping}}
      - webhook: {{url: "{url}"}}
"""


async def deals_with_timers(store: Store, n: int, due: datetime) -> list[str]:
    """``n`` deals in the shop's pipeline, each with a due ``ping`` timer."""
    ids = []
    for i in range(n):
        deal_id = f"deal-{i:03d}"
        await store.deals.insert_one(
            {
                "_id": deal_id,
                "contact_id": f"contact-{i}",
                "pipeline_id": "direct",
                "stage_id": "new_order",
                "open": True,
                "fields": {},
                "responsible_id": "dmitry.kozlov",
            }
        )
        await timers.schedule(
            store,
            {
                "_id": f"timer-{i:03d}",
                "rule_id": "ping",
                "entity": {"kind": "deal", "id": deal_id},
                "entity_id": deal_id,
                "due_at": due,
                "in_stage": False,
            },
        )
        ids.append(deal_id)
    return ids


async def test_three_workers_fire_each_timer_exactly_once(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with hook_server() as hook:
        cfg, _ = config_with_rules(tmp_path, PING_RULES.format(url=hook.url))
        clock = FakeClock(msk(2025, 5, 19, 10, 0))
        store = Store.open(mongo_uri, db_name)
        try:
            await store.ensure_indexes()
            await deals_with_timers(store, 90, msk(2025, 5, 19, 11, 0))
            workers = [
                AutomationWorker(store, cfg, owner=f"w{i}", clock=clock, timer_batch=7)
                for i in range(3)
            ]
            for w in workers:
                await w.prepare()
            # Not due yet: nothing happens.
            assert sum(await asyncio.gather(*(w.run_timers() for w in workers))) == 0
            clock.advance(hours=1)

            async def work(w: AutomationWorker) -> int:
                n = 0
                while await store["timers"].count_documents({"state": "pending"}):
                    n += await w.run_timers()
                    await asyncio.sleep(0)
                return n

            handled = await asyncio.gather(*(work(w) for w in workers))
            assert sum(handled) == 90
            assert sum(1 for h in handled if h) >= 2  # the work was shared
            # The webhook is not idempotent on our side: one POST per timer proves one firing.
            assert len(hook.calls) == 90
            assert set(hook.per_key().values()) == {1}
            assert {c["entity"]["id"] for c in hook.calls} == {f"deal-{i:03d}" for i in range(90)}
            assert await store["tasks"].count_documents({}) == 90
            assert await store.events.count_documents({"type": "timer.fired"}) == 90
            fired = [d["fired"] async for d in store["timers"].find({}, {"fired": 1})]
            states = [d["state"] async for d in store["timers"].find({}, {"state": 1})]
            assert set(fired) == {1}
            assert set(states) == {"done"}
            for w in workers:
                await w.stop()
        finally:
            await store.close()


async def test_a_failing_action_is_retried_and_what_was_done_is_not_redone(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with hook_server(fail_first=2) as hook:
        cfg, _ = config_with_rules(tmp_path, PING_RULES.format(url=hook.url))
        store = Store.open(mongo_uri, db_name)
        clock = FakeClock(msk(2025, 5, 19, 12, 0))
        try:
            await store.ensure_indexes()
            await deals_with_timers(store, 1, msk(2025, 5, 19, 11, 0))
            worker = AutomationWorker(store, cfg, owner="w", clock=clock, retry_s=0.05)
            await worker.prepare()
            for attempt in (1, 2, 3):
                assert await worker.run_timers() == 1, attempt
                if attempt < 3:
                    doc = await store["timers"].find_one({})
                    assert doc is not None
                    # Waiting for its retry: nobody's, claimable when the delay is over.
                    assert (doc["state"], doc["owner"], doc["attempts"]) == (
                        "running",
                        None,
                        attempt,
                    )
                    assert "HTTP 500" in doc["last_error"]
                    assert await worker.run_timers() == 0  # backing off
                    await asyncio.sleep(0.1)
            assert [c["key"] for c in hook.calls] == [hook.calls[0]["key"]] * 3
            assert await store["tasks"].count_documents({}) == 1
            assert await store.events.count_documents({"type": "task.created"}) == 1
            assert await store.events.count_documents({"type": "timer.fired"}) == 1
            doc = await store["timers"].find_one({})
            assert doc is not None
            assert (doc["state"], doc["fired"]) == ("done", 1)
            await worker.stop()
        finally:
            await store.close()


async def test_a_worker_that_dies_midway_is_taken_over(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with hook_server() as hook:
        cfg, _ = config_with_rules(tmp_path, PING_RULES.format(url=hook.url))
        store = Store.open(mongo_uri, db_name)
        clock = FakeClock(msk(2025, 5, 19, 12, 0))
        try:
            await store.ensure_indexes()
            await deals_with_timers(store, 1, msk(2025, 5, 19, 11, 0))
            dead = AutomationWorker(store, cfg, owner="dead", clock=clock, lease_s=0.5)
            # The dead worker claimed the timer and created the task, then died before the
            # webhook: its claim stays until the lease runs out.
            [claimed] = await timers.claim_due(store, "dead", clock.now(), 0.5, 10)
            snap_doc = await entities.get(store, "deal", "deal-000")
            assert snap_doc is not None
            from automation.snapshot import load

            snap = await load(store, dead.book, "deal", "deal-000")
            decision = plan_timer(dead.book, claimed, snap, dead.calendar, clock.now())
            assert snap is not None
            await dead.executor.run(decision.actions[:1], snap)
            assert await store["tasks"].count_documents({}) == 1

            alive = AutomationWorker(store, cfg, owner="alive", clock=clock, lease_s=0.5)
            assert await alive.run_timers() == 0  # still leased to the dead one
            await asyncio.sleep(0.6)
            assert await alive.run_timers() == 1
            assert await store["tasks"].count_documents({}) == 1
            assert len(hook.calls) == 1
            assert hook.calls[0]["key"] == decision.actions[1].key
            doc = await store["timers"].find_one({})
            assert doc is not None
            assert (doc["state"], doc["fired"]) == ("done", 1)
            await alive.stop()
        finally:
            await store.close()


async def test_a_timer_whose_condition_no_longer_holds_is_cancelled(
    mongo_uri: str, db_name: str
) -> None:
    async with robots(mongo_uri, db_name, start=msk(2025, 5, 19, 10, 0)) as r:
        waiting = await r.lead_from("c-1", "+79001110001")
        handled = await r.lead_from("c-2", "+79001110002")
        await r.run()
        assert await r.store["timers"].count_documents({"state": "pending"}) == 2
        # One lead is taken into work within the 2 hours: its timer is cancelled on the
        # stage change, the other fires.
        r.clock.advance(minutes=30)
        await r.move("lead", handled["_id"], "in_work")
        await r.advance(minutes=90)
        notes = await r.notes()
        assert [n["entity"]["id"] for n in notes] == [waiting["_id"]]
        cancelled = await r.store["timers"].find_one({"entity_id": handled["_id"]})
        assert cancelled is not None
        assert (cancelled["state"], cancelled["end_reason"]) == ("cancelled", "left the stage")
        # A timer found void when it comes due (the cancellation was missed) does not fire.
        await r.store["timers"].update_one(
            {"_id": cancelled["_id"]}, {"$set": {"state": "pending", "due_at": r.clock.now()}}
        )
        assert await r.worker.run_timers() == 1
        again = await r.store["timers"].find_one({"_id": cancelled["_id"]})
        assert again is not None
        assert (again["state"], again["end_reason"]) == ("cancelled", "it left the stage")
        assert len(await r.notes()) == 1
        assert len(await r.events("timer.fired")) == 1


async def test_the_event_log_is_followed_once_from_the_cursor(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name) as r:
        lead = await r.lead_from("f-1", "+79001110003")
        await r.move("lead", lead["_id"], "in_work")
        await r.run()
        assert len(await r.tasks()) == 1
        cursor = await r.store["automation_cursors"].find_one({"_id": CURSOR})
        last = await r.store.events.find_one({}, sort=[("seq", -1)])
        assert cursor is not None
        assert last is not None
        assert cursor["seq"] == last["seq"]
        before = await r.store.events.count_documents({})
        # A crash after acting but before the cursor moved: everything is read again.
        await r.store["automation_cursors"].update_one({"_id": CURSOR}, {"$set": {"seq": 0}})
        await r.worker.drain()
        assert len(await r.tasks()) == 1
        assert await r.store.events.count_documents({}) == before
        # The lead had left New before the robots read lead.created: no "untouched" timer.
        assert await r.store["timers"].count_documents({}) == 0
        # A second process does not read along while the first holds the cursor.
        other = AutomationWorker(r.store, r.config, owner="other", clock=r.clock)
        await r.move("lead", lead["_id"], "new")
        assert await other.run_events() == 0
        assert await r.worker.run_events() > 0


async def test_refused_and_impossible_actions_are_recorded(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(
        tmp_path,
        """\
        rules:
          - id: push
            on: stage.entered
            if: {pipeline: leads, stage: in_work}
            do:
              - move_to_stage: {stage: qualified}
              - notify: {to: head, text: "{entity.title} moved"}
              - set_field: {field: touched, value: true}
        """,
    )
    # Qualified needs nothing in the example; add a requirement so the move is refused.
    leads = cfg.pipeline("leads")
    qualified = leads.stages[2].model_copy(update={"required_fields": ["budget"]})
    stages = [qualified if s.id == "qualified" else s for s in leads.stages]
    pipelines = [
        p.model_copy(update={"stages": stages}) if p.id == "leads" else p
        for p in cfg.pipelines.pipelines
    ]
    cfg = cfg.model_copy(
        update={"pipelines": cfg.pipelines.model_copy(update={"pipelines": pipelines})}
    )
    async with robots(mongo_uri, db_name, config=cfg) as r:
        lead = await r.lead_from("x-1", "+79001110004")
        await entities.set_responsible(r.store, "lead", lead["_id"], "ivan.petrov")
        await r.move("lead", lead["_id"], "in_work")
        await r.run()
        failed = {e["data"]["action"]: e["data"] for e in await r.events("automation.failed")}
        assert set(failed) == {"move_to_stage"}
        assert failed["move_to_stage"]["code"] == "stage_refused"
        assert "requires field 'budget'" in failed["move_to_stage"]["error"]
        # The head of sales has no head, and is the only director: the admin is told.
        [note] = await r.notes()
        assert (note["user_id"], note["fallback"]) == ("sergey.volkov", "admin")
        # The rule's last action still ran.
        assert (await r.get("lead", lead["_id"]))["fields"] == {"touched": True}
        assert (await r.get("lead", lead["_id"]))["stage_id"] == "in_work"
        # Recorded as finished: a re-run does not try again.
        keys = [d["key"] for d in failed.values()]
        assert await automation_log.finished(r.store, keys) == set(keys)


async def test_the_service_runs_the_robots(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name, automation_poll_s=0.1, automation_lease_s=5.0) as svc:
        status, _ = await svc.client.post_api(api_body("svc-1", phone="+79001110005"))
        assert status == 200
        await svc.routed()
        lead = await svc.store.leads.find_one({})
        assert lead is not None
        # The service's worker started at the end of the log; what happens now is its.
        cfg = svc.service.config
        await entities.set_responsible(svc.store, "lead", lead["_id"], "anna.smirnova")
        from crm_store.stages import move_stage

        await move_stage(svc.store, "lead", lead["_id"], cfg.pipeline("leads"), "in_work")

        async def task_created() -> bool:
            return await svc.store["tasks"].count_documents({"entity_id": lead["_id"]}) == 1

        await wait_for(task_created, timeout=15, message="the service's robots made no task")
        task = await svc.store["tasks"].find_one({})
        assert task is not None
        assert (task["title"], task["assignee_id"]) == ("Указать тип заказа", "anna.smirnova")
        # Working hours: the deadline is 4 working hours from now.
        from automation.calendar import WorkingCalendar

        cal = WorkingCalendar.from_config(cfg.calendar)
        expected = cal.add_working_time(task["created_at"], timedelta(hours=4))
        assert abs(task["deadline"] - expected) < timedelta(seconds=1)


@pytest.mark.slow
async def test_three_processes_fire_each_timer_once_even_if_one_is_killed(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    async with hook_server() as hook:
        _, cfg_dir = config_with_rules(tmp_path, PING_RULES.format(url=hook.url))
        store = Store.open(mongo_uri, db_name)
        procs = [
            proc(
                mongo_uri,
                db_name,
                tmp_path,
                OMNIROUTE_CONFIG_DIR=str(cfg_dir),
                OMNIROUTE_AUTOMATION_POLL_S="0.1",
                OMNIROUTE_AUTOMATION_LEASE_S="2",
                OMNIROUTE_AUTOMATION_TIMER_BATCH="5",
            )
            for _ in range(3)
        ]
        try:
            await store.ensure_indexes()
            # Due in two seconds of real time: the processes are up by then.
            await deals_with_timers(store, 150, datetime.now(UTC) + timedelta(seconds=2))
            await asyncio.gather(*(p.start() for p in procs))

            async def some_fired() -> bool:
                return len(hook.calls) >= 20

            await wait_for(some_fired, timeout=30, message="no timer fired")
            procs[0].kill()  # mid-way, possibly holding claimed timers

            async def all_fired() -> bool:
                return await store["timers"].count_documents({"state": "done"}) == 150

            await wait_for(all_fired, timeout=60, interval=0.2, message="timers left")
            assert set(hook.per_key().values()) <= {1, 2}
            # A SIGKILL between the POST and the ledger can repeat a POST (at least once,
            # with the same key); the task, the event and the firing are exactly once.
            assert len(hook.per_key()) == 150
            assert sum(v - 1 for v in hook.per_key().values()) <= 5
            assert await store["tasks"].count_documents({}) == 150
            assert await store.events.count_documents({"type": "timer.fired"}) == 150
            assert {d["fired"] async for d in store["timers"].find({})} == {1}
        finally:
            for p in procs:
                await p.stop()
            await store.close()


async def test_message_received_daily_and_timer_due_chains(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(
        tmp_path,
        """\
        rules:
          - id: answer-chats
            on: message.received
            if: {automatic: false, channel: api, pipeline: leads}
            do:
              - create_task: {title: "Answer {contact.name}", template: answer, deadline: 30m}
          - id: morning-digest
            on: lead.created
            daily: {at: "09:30", working_days: true}
            times: 2
            while: {stage: new}
            do:
              - notify: {to: responsible, text: "{entity.title} still new ({timer.n})"}
          - id: escalate-digest
            on: timer.due
            if: {timer: morning-digest}
            do:
              - notify: {to: {user: sergey.volkov}, text: "digest {entity.id} sent"}
        """,
    )
    # Friday evening: the next working mornings are Monday and Tuesday.
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 5, 16, 19, 0)) as r:
        lead = await r.lead_from("m-1", "+79001110006", name="Vera")
        await r.run()
        [task] = await r.tasks()
        assert (task["title"], local_time(task["deadline"])) == ("Answer Vera", "05-16 19:30")
        await r.svc.client.post_api(api_body("m-2", phone="+79001110006", text="hello?"))
        await r.run()
        assert len(await r.tasks(template="answer")) == 2  # one per message
        await r.until(msk(2025, 5, 19, 9, 29))
        assert await r.notes() == []
        await r.until(msk(2025, 5, 19, 9, 30))
        await r.until(msk(2025, 5, 20, 9, 30))
        await r.until(msk(2025, 5, 23, 9, 30))
        digests = await r.notes(user_id=lead["responsible_id"])
        assert [(local_time(n["created_at"]), n["text"][-3:]) for n in digests] == [
            ("05-19 09:30", "(1)"),
            ("05-20 09:30", "(2)"),
        ]
        # Each firing is a timer.due for the rules that follow it.
        escalations = await r.notes(user_id="sergey.volkov")
        assert [n["text"] for n in escalations] == [f"digest {lead['_id']} sent"] * 2


def local_time(value: datetime) -> str:
    return value.astimezone(msk(2025, 1, 1).tzinfo).strftime("%m-%d %H:%M")
