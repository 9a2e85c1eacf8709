"""The robots of issue #21 still missing from the language: a task assignee taken from a
field of the deal (the kitchen shop's master), a task deadline computed from a date field
(the furniture maker's shipping documents, 2 hours before shipping) and parallel linked
processes whose parent moves on once all of them are won (the forensic bureau's two
directions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from automation import people
from automation.calendar import WorkingCalendar
from automation.evaluate import field_moment
from automation.rules import AtField, FieldWho, Rule, UserRef, rule_problems
from crm_store import tasks
from tests.automation_support import msk, robots, seed_config
from tests.test_automation_engine import config_with_rules

ADMIN = "sergey.volkov"


def test_field_assignee_and_deadline_at_in_the_language() -> None:
    rule = Rule.model_validate(
        {
            "id": "assembly",
            "on": "stage.entered",
            "do": [
                {
                    "create_task": {
                        "title": "Assembly",
                        "assignee": {"field": "master"},
                        "deadline_at": {"field": "shipping_date", "offset": "-2h"},
                    }
                },
                {"create_task": {"title": "Call", "assignee": {"user": "anna.smirnova"}}},
            ],
        }
    )
    first, second = (a.create_task for a in rule.do)
    assert first is not None
    assert second is not None
    assert first.assignee == FieldWho(field="master")
    assert isinstance(second.assignee, UserRef)
    assert first.deadline_at == AtField.model_validate({"field": "shipping_date", "offset": "-2h"})
    assert list(rule_problems(rule)) == []
    with_both = Rule.model_validate(
        {
            "id": "x",
            "on": "stage.entered",
            "do": [
                {
                    "create_task": {
                        "title": "T",
                        "deadline": "1d",
                        "deadline_at": {"field": "shipping_date"},
                    }
                }
            ],
        }
    )
    assert [m for _, m in rule_problems(with_both)] == [
        "a task has either deadline or deadline_at, not both"
    ]
    with pytest.raises(ValidationError):
        Rule.model_validate(
            {
                "id": "x",
                "on": "stage.entered",
                "do": [{"create_task": {"title": "T", "assignee": {"field": "Not An Ident"}}}],
            }
        )


def test_field_assignee_resolves_or_falls_back_with_a_reason() -> None:
    cfg = seed_config("furniture")
    master = FieldWho(field="master")
    assert people.assignee(cfg, master, {"master": "nikolai.sidorov"}, "anna.smirnova") == (
        people.Assignee("nikolai.sidorov")
    )
    unknown = people.assignee(cfg, master, {"master": "ghost"}, "anna.smirnova")
    assert unknown.user == "ivan.petrov"  # anna's head, as a notification's fallback
    assert unknown.problem == (
        "assignee: the field master holds 'ghost', not a user; the task goes to the head"
        " ivan.petrov"
    )
    empty = people.assignee(cfg, master, {}, "anna.smirnova")
    assert empty.user == "ivan.petrov"
    assert empty.problem == (
        "assignee: the field master is empty; the task goes to the head ivan.petrov"
    )
    # Not a field: as before.
    assert people.assignee(cfg, "responsible", {}, "anna.smirnova") == people.Assignee(
        "anna.smirnova"
    )


def test_deadline_at_a_field_with_offsets() -> None:
    cal = WorkingCalendar()
    two_before = AtField.model_validate({"field": "s", "offset": "-2h"})
    assert field_moment(two_before, "2025-06-10T12:00:00+03:00", cal) == msk(2025, 6, 10, 10)
    assert field_moment(two_before, msk(2025, 6, 10, 12), cal) == msk(2025, 6, 10, 10)
    at_nine = AtField.model_validate({"field": "s", "time": "09:00", "offset": "-1d"})
    assert field_moment(at_nine, "2025-06-10", cal) == msk(2025, 6, 9, 9)
    # Working days: the working day before Monday 2025-06-16 is Wednesday the 11th (the
    # 12th is Russia Day, the 13th a transferred day off in the 2025 production calendar).
    working = AtField.model_validate({"field": "s", "time": "18:00", "offset": "-1wd"})
    assert field_moment(working, "2025-06-16", cal) == msk(2025, 6, 11, 18)
    for bad in (None, "", "soon", 42, ["2025-06-10"]):
        assert field_moment(two_before, bad, cal) is None


TASK_RULES = """
rules:
  - id: assembly
    on: stage.entered
    if: {pipeline: orders, stage: approval}
    do:
      - create_task:
          title: "Assemble {entity.title}"
          assignee: {field: master}
          deadline_at: {field: shipping_date, offset: -2h}
          remind_before: 1h
"""


async def test_task_assignee_and_deadline_from_the_deal(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, TASK_RULES)
    async with robots(mongo_uri, db_name, config=cfg) as r:
        deals = []
        for n, phone in enumerate(("+79008880201", "+79008880202", "+79008880203")):
            lead = await r.lead_from(f"v3-{n}", phone, f"Kitchen {n}")
            status, deal = await r.api("POST", f"/api/v1/leads/{lead['_id']}/convert", ADMIN, {})
            assert status == 201
            deals.append(deal["id"])
        good, bad, later = deals
        await r.set(
            "deal",
            good,
            estimate_amount=1,
            master="nikolai.sidorov",
            shipping_date="2025-06-10T12:00:00+03:00",
        )
        await r.set("deal", bad, estimate_amount=1, master="nobody", shipping_date="someday")
        await r.set("deal", later, estimate_amount=1, master="igor.nobody")
        await r.set("deal", later, master="nikolai.sidorov")
        for deal_id in deals:
            await r.move("deal", deal_id, "approval")
        await r.run()

        [task] = await r.tasks(entity_id=good)
        assert task["assignee_id"] == "nikolai.sidorov"
        assert task["deadline"] == msk(2025, 6, 10, 10, 0)
        assert task["remind_at"] == msk(2025, 6, 10, 9, 0)

        [fallen] = await r.tasks(entity_id=bad)
        responsible = (await r.get("deal", bad))["responsible_id"]
        assert responsible in ("anna.smirnova", "dmitry.kozlov")  # sales: head ivan.petrov
        assert fallen["assignee_id"] == "ivan.petrov"
        assert fallen["deadline"] is None
        [failed] = await r.events("automation.failed")
        assert failed["refs"]["deal_id"] == bad
        assert failed["data"]["code"] == "bad_task_field"
        assert failed["data"]["error"] == (
            "assignee: the field master holds 'nobody', not a user; the task goes to the head"
            " ivan.petrov deadline_at: the field shipping_date is 'someday', not a date; the"
            " task has no deadline"
        )
        # A replay makes no second task and no second failure.
        await r.run()
        assert len(await r.tasks(rule_id="assembly")) == 3
        assert len(await r.events("automation.failed")) == 1

        # No shipping date yet: no deadline (and no failure) until it is entered; the
        # deadline and its reminder then follow the field, moved or cleared.
        [pending] = await r.tasks(entity_id=later)
        assert (pending["assignee_id"], pending["deadline"]) == ("nikolai.sidorov", None)
        await r.set("deal", later, shipping_date="2025-06-20 15:00")
        await r.run()
        [pending] = await r.tasks(entity_id=later)
        assert pending["deadline"] == msk(2025, 6, 20, 13, 0)
        assert pending["remind_at"] == msk(2025, 6, 20, 12, 0)
        await r.set("deal", later, shipping_date="2025-06-23T11:00:00+03:00")
        await r.run()
        [pending] = await r.tasks(entity_id=later)
        assert pending["deadline"] == msk(2025, 6, 23, 9, 0)
        assert pending["remind_at"] == pending[tasks.REMIND_DUE] == msk(2025, 6, 23, 8, 0)
        # Cleared while open: no deadline, no reminder; entered again: both back.
        await r.set("deal", later, shipping_date=None)
        await r.run()
        [pending] = await r.tasks(entity_id=later)
        assert pending["deadline"] is None
        assert "remind_at" not in pending
        assert tasks.REMIND_DUE not in pending
        await r.set("deal", later, shipping_date="2025-06-23T11:00:00+03:00")
        await r.run()
        [pending] = await r.tasks(entity_id=later)
        assert pending["remind_at"] == pending[tasks.REMIND_DUE] == msk(2025, 6, 23, 8, 0)
        # Other tasks are untouched; a done task keeps its deadline.
        assert (await r.tasks(entity_id=good))[0]["deadline"] == msk(2025, 6, 10, 10, 0)
        await tasks.complete(r.store, pending["_id"], by=ADMIN)
        await r.set("deal", later, shipping_date=None)
        await r.run()
        [done] = await r.tasks(entity_id=later)
        assert done["deadline"] == msk(2025, 6, 23, 9, 0)
        assert len(await r.events("automation.failed")) == 1


PARALLEL_RULES = """
rules:
  - id: directions
    on: stage.entered
    if: {pipeline: orders, stage: approval}
    do:
      - start_process: {pipeline: direct, stage: in_progress, fields: [estimate_amount]}
      - start_process: {pipeline: direct, stage: new_order, fields: []}
"""


async def test_parallel_processes_move_the_parent_when_all_are_won(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, PARALLEL_RULES)
    async with robots(mongo_uri, db_name, config=cfg) as r:
        lead = await r.lead_from("v3-p1", "+79008880301", "Two directions")
        status, deal = await r.api("POST", f"/api/v1/leads/{lead['_id']}/convert", ADMIN, {})
        assert status == 201
        parent_id = deal["id"]
        await r.set("deal", parent_id, estimate_amount=50000)
        await r.move("deal", parent_id, "approval")
        await r.run()
        parent = await r.get("deal", parent_id)
        first, second = parent["children"]
        assert [(await r.get("deal", c))["stage_id"] for c in (first, second)] == [
            "in_progress",
            "new_order",
        ]
        await r.set(
            "deal", parent_id, contract_number="K-2", amount=50000, payment_due_date="2025-07-01"
        )

        # One direction done: the parent waits for the other.
        await r.move("deal", first, "won")
        await r.run()
        assert (await r.get("deal", parent_id))["stage_id"] == "approval"

        await r.move("deal", second, "won")
        await r.run()
        assert (await r.get("deal", parent_id))["stage_id"] == "awaiting_payment"

        # Replays of both completions (a crash replays the log) move nothing again.
        won = [
            e
            for e in await r.events("deal.stage_changed")
            if e["refs"]["deal_id"] in (first, second)
        ]
        assert len(won) == 2
        for ev in won:
            await r.worker.complete_process(ev)
        moves = [
            e["data"]["to"]
            for e in await r.events("deal.stage_changed")
            if e["refs"]["deal_id"] == parent_id
        ]
        assert moves == ["approval", "awaiting_payment"]


COPY_RULES = """
rules:
  - id: project
    on: stage.entered
    if: {pipeline: orders, stage: approval}
    do:
      - start_process: {pipeline: direct, stage: new_order, fields: [estimate_amount]}
  - id: second-direction
    on: stage.entered
    if: {pipeline: direct, stage: in_progress, fields: {both_directions: true}}
    do:
      - start_process:
          {pipeline: direct, stage: in_progress, fields: [estimate_amount], of: parent}
"""


async def test_a_process_copied_for_its_parent_runs_in_parallel(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    cfg, _ = config_with_rules(tmp_path, COPY_RULES)
    async with robots(mongo_uri, db_name, config=cfg) as r:
        lead = await r.lead_from("v3-c1", "+79008880501", "Two directions, copied")
        status, deal = await r.api("POST", f"/api/v1/leads/{lead['_id']}/convert", ADMIN, {})
        assert status == 201
        parent_id = deal["id"]
        await r.set("deal", parent_id, estimate_amount=70000)
        await r.move("deal", parent_id, "approval")
        await r.run()
        [first] = (await r.get("deal", parent_id))["children"]
        await r.set("deal", first, both_directions=True)
        await r.move("deal", first, "in_progress")
        await r.run()
        children = (await r.get("deal", parent_id))["children"]
        assert len(children) == 2
        assert children[0] == first
        copy_id = children[1]
        copy = await r.get("deal", copy_id)
        assert (copy["parent_id"], copy["stage_id"], copy["fields"]) == (
            parent_id,
            "in_progress",
            {"estimate_amount": 70000},
        )
        assert copy["on_complete"] == (await r.get("deal", first))["on_complete"]
        await r.set(
            "deal", parent_id, contract_number="K-3", amount=70000, payment_due_date="2025-07-01"
        )
        await r.move("deal", copy_id, "won")
        await r.run()
        assert (await r.get("deal", parent_id))["stage_id"] == "approval"
        await r.move("deal", first, "won")
        await r.run()
        assert (await r.get("deal", parent_id))["stage_id"] == "awaiting_payment"
        assert await r.events("automation.failed") == []
