"""The store side of automation, against the test MongoDB: stage guards, field edits,
copies, duplicates, tasks, notifications, timers and their claims, the event cursor, the
action ledger."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from config.loader import load_config
from config.models import AppConfig, Pipeline
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import automation_log, cursors, entities, feed, notifications, tasks, timers
from crm_store.stages import StageError, check_move, move_seen, move_stage
from crm_store.store import Store

pytestmark = pytest.mark.contract


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo_uri: str, db_name: str) -> AsyncIterator[Store]:
    s = Store.open(mongo_uri, db_name)
    await s.ensure_indexes()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config(DEFAULT_CONFIG_DIR)


def at(minutes: int = 0) -> datetime:
    return datetime(2025, 5, 19, 7, 0, tzinfo=UTC) + timedelta(minutes=minutes)


async def insert(store: Store, kind: str, doc_id: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": doc_id,
        "contact_id": "contact-1",
        "pipeline_id": "orders" if kind == "deal" else "leads",
        "stage_id": "estimate" if kind == "deal" else "new",
        "open": True,
        "fields": {},
        "responsible_id": "anna.smirnova",
        **fields,
    }
    await entities.collection(store, kind).insert_one(doc)
    return doc


async def types(store: Store) -> list[str]:
    return [e["type"] async for e in store.events.find({}, sort=[("seq", 1)])]


# --- stage guards ------------------------------------------------------------------------


async def test_won_needs_signed_documents_and_full_payment(store: Store, config: AppConfig) -> None:
    orders = config.pipeline("orders")
    await insert(store, "deal", "d1", stage_id="installation", fields={"amount": 150000})
    with pytest.raises(StageError) as info:
        await move_stage(store, "deal", "d1", orders, "won")
    err = info.value
    assert err.code == "stage_refused"
    assert err.missing_fields == []
    assert err.unmet == ["the closing documents are signed", "the order is paid in full"]
    assert "the order is paid in full (not met)" in str(err)
    assert err.details() == {
        "code": "stage_refused",
        "missing_fields": [],
        "unmet": ["the closing documents are signed", "the order is paid in full"],
    }
    await entities.set_fields(
        store, "deal", "d1", {"documents_signed": True, "paid_amount": 100000}
    )
    with pytest.raises(StageError) as info:
        await move_stage(store, "deal", "d1", orders, "won")
    assert info.value.unmet == ["the order is paid in full"]
    await entities.set_fields(store, "deal", "d1", {"paid_amount": 150000})
    moved = await move_stage(store, "deal", "d1", orders, "won", "anna.smirnova")
    assert (moved["stage_id"], moved["open"], moved["outcome"]) == ("won", False, "won")
    # The final "lost" stays reachable whatever the conditions.
    await insert(store, "deal", "d2", stage_id="installation")
    assert (await move_stage(store, "deal", "d2", orders, "lost"))["stage_id"] == "lost"


async def test_a_refusal_lists_every_missing_field_and_condition(
    store: Store, config: AppConfig
) -> None:
    await insert(store, "deal", "d1", stage_id="approval")
    with pytest.raises(StageError) as info:
        await move_stage(store, "deal", "d1", config.pipeline("orders"), "awaiting_payment")
    err = info.value
    assert err.missing_fields == ["contract_number", "amount"]
    assert err.field == "contract_number"
    assert err.unmet == ["the payment due date is set"]
    assert str(err) == (
        "stage awaiting_payment requires field 'contract_number'; stage awaiting_payment "
        "requires field 'amount'; the payment due date is set (not met)"
    )
    assert await store.events.count_documents({}) == 0


def no_return_pipeline() -> Pipeline:
    return Pipeline.model_validate(
        {
            "id": "p",
            "kind": "deal",
            "name": "P",
            "stages": [
                {"id": "a", "name": "A"},
                {"id": "b", "name": "B"},
                {"id": "ship", "name": "Ship", "no_return": True},
                {"id": "c", "name": "C"},
                {"id": "won", "name": "Won", "outcome": "won"},
                {"id": "lost", "name": "Lost", "outcome": "failed"},
            ],
        }
    )


def test_no_return_after_a_stage() -> None:
    p = no_return_pipeline()
    # Before the no-return stage, back and forth is fine.
    check_move(p, {"stage_id": "b"}, "a")
    # From it or after it, not back before it; forward and final moves are fine.
    for current in ("ship", "c"):
        with pytest.raises(StageError, match="no return after ship") as info:
            check_move(p, {"stage_id": current}, "b")
        assert info.value.unmet == [
            "it has reached ship: moving back to b is not allowed (no return after ship)"
        ]
        check_move(p, {"stage_id": current}, "lost")
    check_move(p, {"stage_id": "c"}, "ship")
    # Lost after reaching it: reopening before it is refused; lost early: allowed.
    with pytest.raises(StageError):
        check_move(p, {"stage_id": "lost", "no_return_reached": ["ship"]}, "a")
    check_move(p, {"stage_id": "lost"}, "a")


async def test_reaching_a_no_return_stage_is_remembered(store: Store) -> None:
    p = no_return_pipeline()
    await insert(store, "deal", "d1", pipeline_id="p", stage_id="b")
    await move_stage(store, "deal", "d1", p, "ship")
    await move_stage(store, "deal", "d1", p, "lost")
    with pytest.raises(StageError, match="no return"):
        await move_stage(store, "deal", "d1", p, "a")
    doc = await entities.get(store, "deal", "d1")
    assert doc is not None
    assert doc["no_return_reached"] == ["ship"]


async def test_a_move_keyed_by_automation_is_written_once(store: Store, config: AppConfig) -> None:
    leads = config.pipeline("leads")
    await insert(store, "lead", "l1")
    await move_stage(store, "lead", "l1", leads, "in_work", "automation:r", key="k-1", at=at())
    [ev] = [e async for e in store.events.find({})]
    assert ev["data"] == {
        "from": "new",
        "to": "in_work",
        "by": "automation:r",
        "pipeline_id": "leads",
        "final": False,
    }
    assert ev["occurred_at"] == at()
    doc = await entities.get(store, "lead", "l1")
    assert doc is not None
    assert doc["stage_entered_at"] == at()


async def test_concurrent_moves_from_one_reading_have_exactly_one_winner(
    store: Store, config: AppConfig
) -> None:
    """Three operators read the lead in ``new`` and move it at once: the guards passed for
    ``new``, so only the first write may land; the others are told it moved meanwhile."""
    leads = config.pipeline("leads")
    seen = await insert(store, "lead", "l1")
    targets = ("in_work", "qualified", "spam")
    results = await asyncio.gather(
        *(move_seen(store, "lead", seen, leads, s, by=f"user-{s}") for s in targets),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, dict)]
    conflicts = [r for r in results if isinstance(r, StageError)]
    assert (len(winners), len(conflicts)) == (1, 2), results
    assert {c.code for c in conflicts} == {"conflict"}
    stored = await entities.get(store, "lead", "l1")
    assert stored is not None
    assert stored["stage_id"] == winners[0]["stage_id"]
    [ev] = [e async for e in store.events.find({})]
    assert (ev["data"]["from"], ev["data"]["to"]) == ("new", stored["stage_id"])


async def test_a_move_from_a_stale_reading_is_a_conflict(store: Store, config: AppConfig) -> None:
    """Read in ``new``, moved by someone else to ``in_work``: the move checked against
    ``new`` must not land (its guards were checked for the wrong starting point)."""
    leads = config.pipeline("leads")
    seen = await insert(store, "lead", "l1")
    await move_stage(store, "lead", "l1", leads, "in_work")
    with pytest.raises(StageError) as info:
        await move_seen(store, "lead", seen, leads, "spam")
    assert info.value.code == "conflict"
    stored = await entities.get(store, "lead", "l1")
    assert stored is not None
    assert (stored["stage_id"], stored["open"]) == ("in_work", True)
    assert await store.events.count_documents({}) == 1


# --- entity edits ------------------------------------------------------------------------


async def test_set_fields_announces_only_changes(store: Store) -> None:
    await insert(store, "deal", "d1", fields={"amount": 100})
    changes = await entities.set_fields(
        store, "deal", "d1", {"amount": 150, "note": "x"}, by="anna.smirnova", at=at()
    )
    assert changes == {"amount": (100, 150), "note": (None, "x")}
    assert await entities.set_fields(store, "deal", "d1", {"amount": 150}) == {}
    # A number is not the same value as its text.
    assert await entities.set_fields(store, "deal", "d1", {"amount": "150"}) == {
        "amount": (150, "150")
    }
    assert await entities.set_fields(store, "deal", "d1", {"note": None}) == {"note": ("x", None)}
    doc = await entities.get(store, "deal", "d1")
    assert doc is not None
    assert doc["fields"] == {"amount": "150"}
    evs = [e async for e in store.events.find({}, sort=[("seq", 1)])]
    assert [e["type"] for e in evs] == ["deal.field_changed"] * 3
    assert evs[0]["data"] == {
        "fields": {"amount": {"old": 100, "new": 150}, "note": {"old": None, "new": "x"}},
        "by": "anna.smirnova",
    }
    assert evs[0]["refs"] == {"deal_id": "d1", "contact_id": "contact-1"}


async def test_an_interrupted_keyed_edit_is_announced_once(store: Store) -> None:
    await insert(store, "deal", "d1", fields={"n": "old"})
    # The first run wrote the field and died before its event; the re-run knows the old
    # value from the ledger and announces the change with the same id.
    await entities.collection(store, "deal").update_one(
        {"_id": "d1"}, {"$set": {"fields.n": "new"}}
    )
    for _ in range(2):
        await entities.set_fields(store, "deal", "d1", {"n": "new"}, key="k", before={"n": "old"})
    # As a consumer reads it: the re-run's reserved number is a filler, skipped.
    page = await feed.read(store, 0)
    [ev] = page.events
    assert page.next_after == await store.events.count_documents({})  # no hole
    assert ev["data"]["fields"] == {"n": {"old": "old", "new": "new"}}


async def test_responsible_copy_and_duplicate(store: Store, config: AppConfig) -> None:
    await insert(store, "deal", "d1", fields={"order_number": "ORD-1", "amount": 5})
    assert await entities.set_responsible(store, "deal", "d1", "dmitry.kozlov", by="x")
    assert not await entities.set_responsible(store, "deal", "d1", "dmitry.kozlov")
    source = await entities.get(store, "deal", "d1")
    assert source is not None
    nps = config.pipeline("nps")
    copy, created = await entities.copy_to_pipeline(
        store, source, nps, "survey", ["amount"], key="c1"
    )
    again, created_again = await entities.copy_to_pipeline(
        store, source, nps, "survey", ["amount"], key="c1"
    )
    assert (created, created_again, copy["_id"]) == (True, False, again["_id"])
    assert (copy["fields"], copy["responsible_id"], copy["copied_from"]) == (
        {"amount": 5},
        "dmitry.kozlov",
        "d1",
    )
    assert await store.deals.count_documents({"pipeline_id": "nps"}) == 1
    # A duplicate lead: closed and marked, its open-lead guard released.
    await insert(store, "lead", "l1", open_contact="contact-1")
    await store.conversations.insert_one(
        {"_id": "cv", "target": {"kind": "lead", "id": "l1", "open": True}}
    )
    assert await entities.delete_duplicate(store, "lead", "l1", by="r", key="k-del")
    assert not await entities.delete_duplicate(store, "lead", "l1")
    lead = await entities.get(store, "lead", "l1")
    assert lead is not None
    assert (lead["deleted"], lead["open"], "open_contact" in lead) == (True, False, False)
    conv = await store.conversations.find_one({"_id": "cv"})
    assert conv is not None
    assert conv["target"]["open"] is False
    with pytest.raises(entities.EntityError):
        await entities.set_fields(store, "lead", "l1", {"a": 1})
    with pytest.raises(StageError, match="deleted"):
        await move_stage(store, "lead", "l1", config.pipeline("leads"), "in_work")
    assert Counter(await types(store)) == Counter(
        {"deal.responsible_changed": 1, "deal.created": 1, "lead.deleted": 1}
    )


# --- tasks and notifications -------------------------------------------------------------


def task(task_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "_id": task_id,
        "title": "Call",
        "template": "call",
        "entity": {"kind": "deal", "id": "d1"},
        "entity_id": "d1",
        "contact_id": "contact-1",
        "assignee_id": "anna.smirnova",
        "deadline": at(60),
        "rule_id": "r",
        "created_at": at(),
        **kw,
    }


async def test_tasks_complete_and_reopen(store: Store) -> None:
    doc, created = await tasks.create(store, task("t1"))
    assert created
    assert (doc["status"], doc["round"]) == ("open", 0)
    _, created = await tasks.create(store, task("t1", title="changed"))
    assert not created
    await tasks.create(store, task("t2", assignee_id="dmitry.kozlov", watchers=["anna.smirnova"]))
    assert [t["_id"] for t in await tasks.list_for(store, "anna.smirnova")] == ["t1"]
    assert [t["_id"] for t in await tasks.list_for(store, "anna.smirnova", watching=True)] == ["t2"]
    assert await tasks.states(store, "d1") == {"call": "open"}

    done, changed = await tasks.complete(store, "t1", by="anna.smirnova", at=at(5))
    assert changed
    assert done is not None
    assert (done["status"], done["completed_by"], done["round"]) == ("done", "anna.smirnova", 1)
    assert (await tasks.complete(store, "t1"))[1] is False
    assert (await tasks.reopen(store, "t1", by="ivan.petrov"))[1] is True
    assert (await tasks.complete(store, "t1"))[1] is True
    assert (await tasks.complete(store, "missing"))[0] is None
    assert await types(store) == [
        "task.created",
        "task.created",
        "task.completed",
        "task.reopened",
        "task.completed",
    ]
    completed = [e async for e in store.events.find({"type": "task.completed"})]
    assert len({e["_id"] for e in completed}) == 2
    assert completed[0]["refs"] == {"task_id": "t1", "contact_id": "contact-1", "deal_id": "d1"}
    assert completed[0]["data"] == {
        "template": "call",
        "assignee_id": "anna.smirnova",
        "by": "anna.smirnova",
    }


async def test_notifications(store: Store) -> None:
    docs = [
        {
            "_id": f"n{i}",
            "user_id": user,
            "text": f"hello {i}",
            "entity": {"kind": "deal", "id": "d1"},
            "contact_id": "c",
            "rule_id": "r",
            "created_at": at(i),
            "read_at": None,
        }
        for i, user in enumerate(["anna.smirnova", "anna.smirnova", "ivan.petrov"])
    ]
    assert await notifications.create_many(store, docs) == {"n0", "n1", "n2"}
    assert await notifications.create_many(store, docs) == set()
    assert await store.events.count_documents({"type": "notification.created"}) == 3
    mine = await notifications.list_for(store, "anna.smirnova")
    assert [n["_id"] for n in mine] == ["n1", "n0"]
    read = await notifications.mark_read(store, "n0", "anna.smirnova")
    assert read is not None
    assert read["read_at"] is not None
    assert await notifications.mark_read(store, "n2", "anna.smirnova") is None  # not hers
    assert [
        n["_id"] for n in await notifications.list_for(store, "anna.smirnova", unread=True)
    ] == ["n1"]


# --- timers, cursor, ledger --------------------------------------------------------------


def timer(i: int, due: datetime, **kw: Any) -> dict[str, Any]:
    return {
        "_id": f"t{i}",
        "rule_id": "r",
        "entity": {"kind": "deal", "id": f"d{i % 7}"},
        "entity_id": f"d{i % 7}",
        "due_at": due,
        **kw,
    }


async def test_timers_are_claimed_once_by_concurrent_workers(store: Store) -> None:
    for i in range(120):
        assert await timers.schedule(store, timer(i, at(i % 60)))
    assert not await timers.schedule(store, timer(0, at(999)))  # exists: unchanged
    due = at(30)  # 31 due per "minute" 0..30, twice: 62 timers

    async def worker(n: int) -> list[str]:
        got: list[str] = []
        while batch := await timers.claim_due(store, f"w{n}", due, 30.0, 7):
            got += [t["_id"] for t in batch]
        return got

    claims = await asyncio.gather(*(worker(n) for n in range(5)))
    everything = [t for c in claims for t in c]
    assert len(everything) == len(set(everything)) == 62
    assert sum(1 for c in claims if c) >= 2  # the work was shared
    # Claimed timers are not claimable again until their lease runs out …
    assert await timers.claim_due(store, "late", due, 30.0, 100) == []
    # … and then they are.
    later = datetime.now(UTC) + timedelta(seconds=31)
    assert len(await timers.claim_due(store, "late", due, 30.0, 100, now=later)) == 62


async def test_a_firing_counts_only_for_the_holder(store: Store) -> None:
    await timers.schedule(store, timer(1, at()))
    [mine] = await timers.claim_due(store, "a", at(), 30.0, 10)
    assert not await timers.fired(store, mine, "b", next_due=None, at=at())  # not b's
    assert await timers.fired(store, mine, "a", next_due=at(10), at=at())
    assert not await timers.fired(store, mine, "a", next_due=None, at=at())  # counted already
    doc = await timers.timers(store).find_one({"_id": "t1"})
    assert doc is not None
    assert (doc["state"], doc["fired"], doc["due_at"], doc["owner"]) == ("pending", 1, at(10), None)
    [again] = await timers.claim_due(store, "b", at(10), 30.0, 10)
    assert await timers.fired(store, again, "b", next_due=None, at=at(10))
    doc = await timers.timers(store).find_one({"_id": "t1"})
    assert doc is not None
    assert (doc["state"], doc["fired"]) == ("done", 2)


async def test_failed_firings_are_retried_then_given_up(store: Store) -> None:
    await timers.schedule(store, timer(1, at()))
    for attempt in range(1, 4):
        now = datetime.now(UTC) + timedelta(seconds=attempt * 10)
        [t] = await timers.claim_due(store, "w", at(), 1.0, 10, now=now)
        retried = await timers.retry_later(
            store, t, "w", "boom", retry_in_s=5, max_attempts=3, at=at(), now=now
        )
        assert retried is (attempt < 3)
        assert (
            await timers.claim_due(store, "w", at(), 1.0, 10, now=now + timedelta(seconds=1)) == []
        )
    doc = await timers.timers(store).find_one({"_id": "t1"})
    assert doc is not None
    assert (doc["state"], doc["attempts"], doc["last_error"]) == ("failed", 3, "boom")


async def test_leaving_a_stage_cancels_that_visits_timers(store: Store) -> None:
    since = at()
    await timers.schedule(store, timer(1, at(60), in_stage=True, stage_id="a", stage_since=since))
    await timers.schedule(store, timer(8, at(60), in_stage=True, stage_id="b", stage_since=since))
    await timers.schedule(store, timer(15, at(60), in_stage=False))
    # t1, t8, t15 are all on d1; the entity is now in b since the same moment.
    assert await timers.cancel_left_stage(store, "d1", "b", since, at(1)) == 1
    states = {d["_id"]: d["state"] async for d in timers.timers(store).find({})}
    assert states == {"t1": "cancelled", "t8": "pending", "t15": "pending"}
    # Re-entered b later: the old visit of b is over too.
    assert await timers.cancel_left_stage(store, "d1", "b", at(30), at(31)) == 1
    assert await timers.next_due(store) == at(60)


async def test_the_cursor_is_held_by_one_process(store: Store) -> None:
    assert await cursors.ensure(store, "c", 5) == 5
    assert await cursors.ensure(store, "c", 99) == 5
    a = await cursors.hold(store, "c", "a", 30.0)
    assert a is not None
    assert await cursors.hold(store, "c", "b", 30.0) is None
    assert await cursors.hold(store, "c", "a", 30.0) is not None  # renewed
    assert not await cursors.advance(store, "c", "b", 10)
    assert await cursors.advance(store, "c", "a", 10)
    assert not await cursors.advance(store, "c", "a", 9)  # never backwards
    await cursors.release(store, "c", "a")
    b = await cursors.hold(store, "c", "b", 30.0)
    assert b is not None
    assert b["seq"] == 10


async def test_the_ledger_keeps_the_first_runs_memo(store: Store) -> None:
    first = await automation_log.begin(store, "k", {"old": 1})
    again = await automation_log.begin(store, "k", {"old": 2})
    assert (first["memo"], again["memo"], again["attempts"]) == ({"old": 1}, {"old": 1}, 2)
    await automation_log.remember(store, "k", {"n": 7})
    assert (await automation_log.begin(store, "k", {}))["memo"] == {"old": 1, "n": 7}
    assert await automation_log.finished(store, ["k", "x"]) == set()
    await automation_log.finish(store, "k")
    assert await automation_log.finished(store, ["k", "x"]) == {"k"}
